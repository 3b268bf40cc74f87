"""Personalisation: placements whose content depends on the audience a person belongs to.

``placements`` keeps the definitions (validated on save); ``choose`` answers which content a
person sees, from placements compiled in memory and the in-process bitmap index.
"""

from rapport.personalize.choose import Choice, choose, personalizer, resolve_person
from rapport.personalize.errors import PlacementError, PlacementExists, PlacementNotFound
from rapport.personalize.placements import (
    PlacementIn,
    VariantIn,
    create_placement,
    delete_placement,
    get_placement,
    list_placements,
    update_placement,
)

__all__ = [
    "Choice",
    "PlacementError",
    "PlacementExists",
    "PlacementIn",
    "PlacementNotFound",
    "VariantIn",
    "choose",
    "create_placement",
    "delete_placement",
    "get_placement",
    "list_placements",
    "personalizer",
    "resolve_person",
    "update_placement",
]
