"""How a stage tells the user what is wrong: one line."""

import json


class StageError(ValueError):
    """Bad input or a failed check, told to the user as one line (exit status 2, no traceback)."""


def short_json(value: object) -> str:
    """A value as JSON, cut to 40 characters, to quote it inside a one-line error."""
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
