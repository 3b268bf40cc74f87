"""What can go wrong with a placement: a bad definition, or a name nobody defined."""

from __future__ import annotations


class PlacementError(ValueError):
    """A definition that cannot be saved; ``field`` says where (``variants[2].audience``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PlacementExists(PlacementError):
    pass


class PlacementNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no placement named {name!r}")
