"""User templates (webhook bodies, provider requests, mail subjects): Jinja2's sandbox.

Templates are written by console users, so they run in ``SandboxedEnvironment`` (no
``__class__`` walks to Python internals) with ``StrictUndefined`` (a misspelt field is an
error, not an empty string in a customer's SMS). A JSON template must render valid JSON.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment

from rapport.delivery.errors import DeliveryError

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@lru_cache(maxsize=512)
def _compiled(source: str) -> Any:
    return _env.from_string(source)


def check(source: str, field: str) -> None:
    """Refuse, when it is saved, a template that does not parse or reaches for ``_private``
    attributes (the sandbox would refuse them at send time anyway)."""
    try:
        tree = _env.parse(source)
    except TemplateError as exc:
        raise DeliveryError(f"{field}: the template does not parse: {exc}", field) from None
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            name = node.attr
        else:
            name = getattr(getattr(node, "arg", None), "value", "")
        if isinstance(name, str) and name.startswith("_"):
            raise DeliveryError(f"{field}: the template may not use the attribute {name!r}", field)


def render_text(source: str, context: dict[str, Any], field: str = "template") -> str:
    if "{" not in source:  # plain text (most URLs and headers): nothing to render
        return source
    try:
        return str(_compiled(source).render(context))
    except TemplateError as exc:  # includes SecurityError and UndefinedError
        raise DeliveryError(f"{field}: {exc.__class__.__name__}: {exc}", field) from None


def render_json(source: str, context: dict[str, Any], field: str = "template") -> bytes:
    """Render and check that the result is JSON; the compact bytes to send."""
    text = render_text(source, context, field)
    try:
        return orjson.dumps(orjson.loads(text))
    except orjson.JSONDecodeError as exc:
        raise DeliveryError(
            f"{field}: the rendered template is not valid JSON: {exc}", field
        ) from None
