"""How a model is trained: its settings and their checks (light, run before TensorFlow loads),
the trainer, its callbacks and checkpoints, the losses, and how a run spreads over devices.
"""
