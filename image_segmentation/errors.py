"""How a stage tells the user what is wrong: one line."""

import json


class StageError(ValueError):
    """Bad input or a failed check, told to the user as one line (exit status 2, no traceback)."""


class Stopped(BaseException):
    """A stage ended by a signal, told as one line (exit status 128 + the signal, as a shell
    reports it). Not an Exception, so that no `except Exception` on the way swallows it (the
    logging module's would, if the signal came during a log write)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.status = 128 + signum


def short_json(value: object) -> str:
    """A value as JSON, cut to 40 characters, to quote it inside a one-line error."""
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
