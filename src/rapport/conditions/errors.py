"""The one error type of the condition language: what is wrong, and where in the tree."""

from __future__ import annotations


class ConditionError(ValueError):
    """``path`` is a JSON path into the tree (``$.all[2].where[0]``) or a text position
    (``line 1, column 14``); the message says what is wrong and, when it can, what was meant."""

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(f"{path}: {message}")
        self.message = message
        self.path = path
