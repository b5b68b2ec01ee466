"""The command line itself: every stage's --help answers at once, without TensorFlow."""

import subprocess
import sys
import time

import pytest

from image_segmentation import cli

# Prints the help, then the TensorFlow, Keras and coremltools modules imported for it.
HELP = """
import sys
from image_segmentation import cli
try:
    cli.main([sys.argv[1], "--help"])
except SystemExit:
    pass
HEAVY = ("tensorflow", "keras", "coremltools")
print(sorted(name for name in sys.modules if name.split(".")[0] in HEAVY))
"""


@pytest.mark.parametrize("stage", cli.STAGES)
def test_help_imports_no_tensorflow(stage):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", HELP, stage], capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    usage, imported = result.stdout.rstrip().rsplit("\n", 1)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert usage.startswith(f"usage: python -m image_segmentation {stage}")
    assert imported == "[]"
    assert elapsed < 5, f"{stage} --help took {elapsed:.1f} s"
