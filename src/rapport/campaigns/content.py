"""The functions campaign content may call: ``coupon(name)``, ``link(url)``, ``qr(url)``.

They are plain closures over one person (the sandbox forbids their ``__`` attributes, so
content reaches no Python internals through them). A send issues coupons and stores links; a
plan's samples and previews write nothing: a coupon must exist and shows a stand-in code, a
link shows a ``preview`` token (the editor's unsaved content has no campaign yet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from rapport.campaigns.coupons import check_coupon, issue_many
from rapport.campaigns.links import Links, check_target

if TYPE_CHECKING:
    from rapport.workspace import Workspace


class ContentFunctions:
    def __init__(self, ws: Workspace, campaign_id: int | None, *, issuing: bool) -> None:
        self.ws = ws
        self.campaign_id = campaign_id
        self.links = Links(ws, campaign_id) if issuing and campaign_id is not None else None
        self._persons: list[int] = []
        self._codes: dict[str, dict[int, str]] = {}

    def chunk(self, persons: list[int]) -> None:
        """The persons rendered next: a coupon's codes are issued for all of them at once."""
        self._persons = persons
        self._codes.clear()

    def _code(self, name: str, campaign_id: int, person_key: int) -> str:
        codes = self._codes.setdefault(name, {})
        if person_key not in codes:
            persons = self._persons if person_key in self._persons else [person_key]
            codes.update(issue_many(self.ws, name, campaign_id, persons))
        return codes[person_key]

    def for_person(self, person_key: int) -> dict[str, Callable[[str], str]]:
        ws, cid, links = self.ws, self.campaign_id, self.links
        base = ws.settings.public_url.rstrip("/")

        def coupon(name: str) -> str:
            if links is None or cid is None:
                return check_coupon(ws, str(name))
            return self._code(str(name), cid, person_key)

        def link(url: str) -> str:
            if links is None:
                return f"{base}/r/preview?to={quote(check_target(str(url)), safe='')}"
            return links.link(str(url), person_key)

        def qr(url: str) -> str:
            if links is None:
                return f"{base}/q/preview.png?to={quote(check_target(str(url)), safe='')}"
            return links.qr(str(url), person_key)

        return {"coupon": coupon, "link": link, "qr": qr}
