"""Placements: the variant a person gets (priority, membership, default, paused variants), a
membership change seen by the next call, definitions checked on save, and who may call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyroaring import BitMap

from conftest import copy_home
from rapport import accounts
from rapport.personalize import (
    PlacementError,
    PlacementIn,
    choose,
    create_placement,
    personalizer,
    resolve_person,
    update_placement,
)
from rapport.personalize.choose import RECHECK_S
from rapport.segments import audiences, segmentations
from rapport.segments.bitmaps import put_segment
from rapport.segments.store import change_members
from rapport.settings import Settings
from rapport.workspace import Workspace


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path)


@pytest.fixture
def world(workspace: Any) -> Any:
    """Audiences ``vip`` {1, 2} and ``new_users`` {2, 3}; segmentation ``gender`` f={4}."""
    for name, keys in (("vip", [1, 2]), ("new_users", [2, 3])):
        audiences.create_audience(workspace, name, None, mode="static")
        put_segment(workspace, name, {None: BitMap(keys)})
    definition = {
        "dimension": "gender",
        "buckets": [
            {"name": "f", "condition": {"kind": "attr", "field": "gender", "op": "=", "value": "f"}}
        ],
    }
    segmentations.create_segmentation(workspace, "gender", definition)
    put_segment(workspace, "gender", {"f": BitMap([4])})
    return workspace


def banner(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "home_banner",
        "description": "the home page's hero",
        "default": {"title": "Welcome"},
        "variants": [
            {"audience": "new_users", "priority": 1, "content": {"title": "Your first coupon"}},
            {"audience": "vip", "priority": 5, "content": {"title": "VIP lounge"}},
            {"audience": "gender", "bucket": "f", "priority": 0, "content": {"title": "For her"}},
        ],
    }
    return {**body, **changes}


def test_the_highest_priority_audience_wins_else_the_default(world):
    create_placement(world, PlacementIn.model_validate(banner()))
    both = choose(world, "home_banner", 2)  # in vip (5) and new_users (1)
    assert (both.variant, both.content) == ("vip", {"title": "VIP lounge"})
    assert both.reason == "member of vip"
    assert choose(world, "home_banner", 3).variant == "new_users"
    bucket = choose(world, "home_banner", 4)
    assert (bucket.variant, bucket.reason) == ("gender/f", "member of gender/f")
    nobody = choose(world, "home_banner", 99)
    assert (nobody.variant, nobody.audience, nobody.content) == (
        "default",
        None,
        {"title": "Welcome"},
    )


def test_paused_variants_are_skipped_and_ties_keep_the_editors_order(world):
    body = banner()
    body["variants"][1]["active"] = False  # vip paused
    body["variants"].append({"name": "vip_too", "audience": "vip", "priority": 1, "content": {}})
    create_placement(world, PlacementIn.model_validate(body))
    assert choose(world, "home_banner", 2).variant == "new_users"  # tie at 1: the upper row
    assert choose(world, "home_banner", 1).variant == "vip_too"


def test_an_edit_and_a_membership_change_reach_the_next_call(world):
    create_placement(world, PlacementIn.model_validate(banner()))
    assert choose(world, "home_banner", 7).variant == "default"
    change_members(world, "new_users", BitMap([7]), BitMap())  # the stream's path
    assert choose(world, "home_banner", 7).variant == "new_users"
    change_members(world, "new_users", BitMap(), BitMap([7]))
    assert choose(world, "home_banner", 7).variant == "default"
    update_placement(world, "home_banner", PlacementIn.model_validate(banner(default={"x": 1})))
    assert choose(world, "home_banner", 7).content == {"x": 1}


def test_another_processes_edit_is_seen_after_the_recheck(world):
    create_placement(world, PlacementIn.model_validate(banner()))
    assert choose(world, "home_banner", 9).content == {"title": "Welcome"}
    other = Workspace(world.settings)  # its own compiled placements, like another process
    update_placement(other, "home_banner", PlacementIn.model_validate(banner(default={"x": 2})))
    assert choose(world, "home_banner", 9).content == {"title": "Welcome"}  # not rechecked yet
    personalizer(world)._checked -= RECHECK_S  # a second later
    assert choose(world, "home_banner", 9).content == {"x": 2}
    other.close()


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"audience": "vipp"},
            "variants[0].audience",
            "unknown segment `vipp`; did you mean `vip`?",
        ),
        ({"audience": "gender", "bucket": "m"}, "variants[0].bucket", "unknown bucket `m`"),
        ({"audience": "vip", "bucket": "x"}, "variants[0].bucket", "it has no buckets"),
    ],
)
def test_unknown_audiences_are_named(world, change, field, words):
    body = banner(variants=[{"content": {}, **change}])
    with pytest.raises(PlacementError) as caught:
        create_placement(world, PlacementIn.model_validate(body))
    assert caught.value.field == field and words in caught.value.message


def test_content_must_be_a_small_json_object():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="valid dictionary"):
        PlacementIn.model_validate(banner(default=["not", "an", "object"]))
    with pytest.raises(ValidationError, match="at most 16,384"):
        PlacementIn.model_validate(banner(default={"text": "x" * 20_000}))


# -- the API -----------------------------------------------------------------------------------
def test_the_api_end_to_end(world, client, admin_headers):
    created = client.post("/api/placements", json=banner(), headers=admin_headers)
    assert created.status_code == 201, created.text
    assert [v["name"] for v in created.json()["variants"]] == ["new_users", "vip", "gender/f"]
    viewer = accounts.create_token(world.db, accounts.Role.viewer, "website")
    site = {"Authorization": f"Bearer {viewer}"}  # the customer's backend: a read token
    got = client.get("/api/personalize/home_banner", params={"person": "2"}, headers=site)
    assert got.status_code == 200
    assert got.json() == {
        "placement": "home_banner",
        "person_key": 2,
        "variant": "vip",
        "audience": "vip",
        "bucket": None,
        "reason": "member of vip",
        "content": {"title": "VIP lounge"},
    }
    assert client.get("/api/placements", headers=site).json()[0]["name"] == "home_banner"
    # a read token cannot edit
    assert client.put("/api/placements/home_banner", json=banner(), headers=site).status_code == 403
    bad = banner(variants=[{"audience": "nobody_here", "content": {}}])
    refused = client.put("/api/placements/home_banner", json=bad, headers=admin_headers)
    assert refused.status_code == 422
    assert refused.json()["field"] == "variants[0].audience"
    assert "nobody_here" in refused.json()["detail"]
    missing = client.get("/api/personalize/nope", params={"person": "2"}, headers=site)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    garbled = client.get("/api/personalize/home_banner", params={"person": "x"}, headers=site)
    assert garbled.status_code == 422
    assert client.delete("/api/placements/home_banner", headers=admin_headers).status_code == 204
    assert (
        client.get("/api/personalize/home_banner", params={"person": "2"}, headers=site).status_code
        == 404
    )


def test_no_token_no_content(world, client):
    got = client.get("/api/personalize/home_banner", params={"person": "2"})
    assert got.status_code == 401
    assert client.post("/api/placements", json=banner()).status_code == 401


def test_a_person_named_by_an_identifier(world, client, admin_headers):
    from test_identity_resolve import _event, _load

    _load(world, [_event(1, anon="cookie-x")])
    person = resolve_person(world, "anonymous_id:cookie-x")
    assert person is not None
    change_members(world, "vip", BitMap([person]), BitMap())
    client.post("/api/placements", json=banner(), headers=admin_headers)

    def ask(who: str) -> Any:
        params = {"person": who}
        return client.get("/api/personalize/home_banner", params=params, headers=admin_headers)

    assert ask("anonymous_id:cookie-x").json()["variant"] == "vip"
    nobody = ask("anonymous_id:cookie-404")
    assert (nobody.json()["variant"], nobody.json()["person_key"]) == ("default", None)
    unknown_type = ask("shoe_size:42")
    assert unknown_type.status_code == 422 and "shoe_size" in unknown_type.json()["detail"]


def test_the_console_editor_saves_and_previews(world, client):
    from test_console import as_role

    csrf = as_role(client, world, accounts.Role.marketer)
    assert "Placements" in client.get("/placements").text
    page = client.get("/placements/new")
    assert 'value="gender/f"' in page.text and 'value="vip"' in page.text
    form = {
        "name": "home_banner",
        "description": "hero",
        "default": '{"title": "Welcome"}',
        "v_name": ["", "her"],
        "v_audience": ["vip", "gender/f"],
        "v_priority": ["1", "2"],
        "v_active": ["yes", "yes"],
        "v_content": ['{"title": "VIP"}', '{"title": "For her"}'],
    }
    saved = client.post("/placements", data=form, headers={"X-CSRF-Token": csrf})
    assert saved.headers["HX-Redirect"] == "/placements/home_banner"
    assert [v["name"] for v in choose_names(world)] == ["vip", "her"]
    shown = client.get("/placements/home_banner/preview", params={"person": "4"})
    assert "her" in shown.text and "member of gender/f" in shown.text
    form["v_content"] = ["[1]", "{}"]
    refused = client.post("/placements/home_banner", data=form, headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 422 and "variants.0.content" in refused.json()["detail"]


def choose_names(ws: Any) -> list[dict[str, Any]]:
    from rapport.personalize import get_placement

    return list(get_placement(ws, "home_banner")["variants"])
