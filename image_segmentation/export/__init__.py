"""Core ML and TFLite: what an export can be asked for (options.py, light), the exporter, the
Core ML conversion and its spec check, the TFLite conversion and its checks.
"""
