"""Schemathesis over every operation of the OpenAPI schema, in-process, as an admin.

Each generated request must get an answer that is not a 5xx, whose status code is declared
in the schema and whose body matches the declared schema (issue 7). The quick run (a few
examples per operation) is part of the default suite; ``-m long`` runs many more.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from conftest import copy_home
from rapport import accounts
from rapport.settings import Settings, load_settings
from rapport.web.app import create_app
from rapport.workspace import Workspace

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
BASE = "http://testserver"


class Api:
    """One app and admin token shared by every generated request of the module."""

    def __init__(self, settings: Settings) -> None:
        self.ws = Workspace(settings)
        self.ws.init()
        self.app = create_app(workspace=self.ws)
        self.token = accounts.create_token(self.ws.db, accounts.Role.admin, "fuzz")
        self.headers = {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def api(migrated_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = Api(copy_home(migrated_home, tmp_path_factory.mktemp("fuzz-api")))
    with TestClient(api.app, raise_server_exceptions=True) as client:
        api.client = client  # type: ignore[attr-defined]
        yield api


def openapi() -> dict[str, Any]:
    """The app's schema, read at collection time (building the app writes only a key file)."""
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(load_settings(home=Path(tmp) / "home")).openapi()


SPEC = openapi()
# quick: generated requests only; thorough: also the coverage phase (boundary values and
# deliberately invalid requests for every parameter: hundreds per operation)
quick_schema = schemathesis.openapi.from_dict(SPEC)
quick_schema.config.phases.coverage.enabled = False
thorough_schema = schemathesis.openapi.from_dict(SPEC)


def call(api: Api, case: Any) -> None:
    kwargs = case.as_transport_kwargs(base_url=BASE, headers=api.headers)
    kwargs.pop("cookies", None)
    if "data" in kwargs and isinstance(kwargs["data"], bytes | str):
        kwargs["content"] = kwargs.pop("data")
    try:
        response = api.client.request(**kwargs)  # type: ignore[attr-defined]
    except Exception as exc:  # a 500: show where it came from, and the request
        trace = "".join(traceback.format_exception(exc)[-6:])
        pytest.fail(f"server error for\n{case.as_curl_command()}\n{trace}", pytrace=False)
    case.validate_response(response, checks=CHECKS)


COMMON = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@quick_schema.parametrize()
@settings(max_examples=3, **COMMON)  # type: ignore[arg-type]
def test_api_quick(case: Any, api: Api) -> None:
    call(api, case)


#: examples per operation of the thorough run (FUZZ_EXAMPLES=100: ~30 min on this machine)
THOROUGH = int(os.environ.get("FUZZ_EXAMPLES", "25"))


@pytest.mark.long
@thorough_schema.parametrize()
@settings(max_examples=THOROUGH, **COMMON)  # type: ignore[arg-type]
def test_api_thorough(case: Any, api: Api) -> None:
    call(api, case)
