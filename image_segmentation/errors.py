class StageError(ValueError):
    """Bad input or a failed check, told to the user as one line (exit status 2, no traceback)."""
