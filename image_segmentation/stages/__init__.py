"""The command lines, one module per stage: its flags and options, the checks that need no
TensorFlow, then `run`, which imports the work (and TensorFlow) only once the input is known to
be good, so `--help` and bad input answer at once. Nothing outside this folder imports it: the
entry point (cli.py) finds a stage by its name.
"""
