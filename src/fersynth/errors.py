"""The one exception type that entry points turn into a clear line and exit code 2."""

from __future__ import annotations


class FersynthError(Exception):
    """Bad input a user can act on: the message names the file / row / key, the hint says what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message
