"""Every folder that passes between stages, one module each: its file names, its checks and its
completion marker, written last, so a reader never takes a half-written folder. No TensorFlow:
every stage checks its inputs with these before loading it.
"""
