"""ICNet itself: the network, the input sizes and widths it can take, its ImageNet
initialization, and a model folder's weights loaded for inference.
"""
