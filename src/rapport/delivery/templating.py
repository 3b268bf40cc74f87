"""User templates (webhook bodies, provider requests, mail subjects): Jinja2's sandbox.

Templates are written by console users, so they run in ``SandboxedEnvironment`` (no
``__class__`` walks to Python internals) with ``StrictUndefined`` (a misspelt field is an
error, not an empty string in a customer's SMS). A JSON template must render valid JSON.

The sandbox guards attributes, not work: ``{{ 9**9**9 }}``, ``{{ 'x' * 10**9 }}`` or two
nested ``range(100000)`` loops would hold a dispatcher's CPU or memory. So every render gets
a budget (``MAX_STEPS`` loop iterations, ``MAX_SECONDS``, ``MAX_OUTPUT`` characters), the
operators and calls that multiply sizes are bounded, and any failure inside a template is a
``DeliveryError`` naming the field, never another exception.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment

from rapport.delivery.errors import DeliveryError

MAX_OUTPUT = 1 << 20  # characters a template may produce
MAX_STEPS = 200_000  # loop iterations (and range() items) per render
MAX_SECONDS = 2.0  # wall time per render
MAX_SIZE = 100_000  # a number that sizes something: width, repeat count, exponent result
# a width or precision of 100000 or more in a %-format or str.format string
_WIDTH = re.compile(r"%[-+ #0]*\d*\.?\d{6,}|\{[^{}]*:[^{}]*\d{6,}")


class TemplateLimit(TemplateError):
    """A template that would take more than its budget."""


@dataclass
class _Budget:
    deadline: float = field(default_factory=lambda: time.monotonic() + MAX_SECONDS)
    steps: int = 0

    def spend(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > MAX_STEPS:
            raise TemplateLimit(f"more than {MAX_STEPS} loop iterations")
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"rendering took more than {MAX_SECONDS:g} s")


_budget: ContextVar[_Budget] = ContextVar("template_budget")


def _spend(steps: int = 1) -> None:
    budget = _budget.get(None)
    if budget is not None:
        budget.spend(steps)


def _sized(value: Any, what: str) -> Any:
    if isinstance(value, int) and abs(value) > MAX_SIZE:
        shown = value if value.bit_length() <= 64 else f"a {value.bit_length()}-bit number"
        raise TemplateLimit(f"{what}: {shown} is over the limit of {MAX_SIZE}")
    if isinstance(value, str) and _WIDTH.search(value):
        raise TemplateLimit(f"{what}: a width or precision over {MAX_SIZE - 1} in {value!r}")
    return value


def _check_length(value: Any) -> Any:
    if isinstance(value, _STR_TYPES) and len(value) > MAX_OUTPUT:
        raise TemplateLimit(f"a value of {len(value)} items, over the limit of {MAX_OUTPUT}")
    return value


def _range(*args: int) -> range:
    items = range(*args)  # each range() pays for its length up front

    _spend(len(items))
    return items


def _loop(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps every ``{% for %}``'s iterable (see ``_guard_loops``): one step per iteration."""
    for item in iterable:
        _spend()
        yield item


#: filters whose numeric arguments size their output (``center(10**9)``, ``slice(10**9)``)
_SIZING_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "slice", "batch"})
_STR_TYPES = (str, bytes, list, tuple)


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``center(10**9)``, ``format('%999999999d')``, ``replace('a', 'a'*99999)``: sizing
    arguments and format strings are bounded, and so is what every filter returns."""

    @wraps(func)  # keeps jinja's pass_context marks
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if name in _SIZING_FILTERS:
            for arg in [*args[1:], *kwargs.values()]:
                _sized(arg, f"filter {name}")
        elif name == "format":
            _sized(args[0] if args else "", "filter format")
        _spend()
        return _check_length(func(*args, **kwargs))

    return guarded


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            _sized(right, "exponent")
            # the result's size, not its value: 2**100000 is fine, 9**99999 is not
            ints = isinstance(left, int) and isinstance(right, int)
            if ints and right > 0 and right * abs(left).bit_length() > 64 * MAX_SIZE:
                raise TemplateLimit(
                    f"a {abs(left).bit_length()}-bit number ** {right} is too large a number"
                )
        elif op == "*":
            for side, other in ((left, right), (right, left)):
                sized = isinstance(side, str | bytes | list | tuple) and isinstance(other, int)
                if sized and len(side) * other > MAX_OUTPUT:
                    raise TemplateLimit(
                        f"repeating {len(side)} items {other} times is over "
                        f"the limit of {MAX_OUTPUT}"
                    )
        elif op == "%" and isinstance(left, str):
            _sized(left, "format")
        _spend()
        result = {"*": operator.mul, "**": operator.pow, "%": operator.mod, "+": operator.add}[op](
            left, right
        )
        return _check_length(result)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if isinstance(getattr(__obj, "__self__", None), _STR_TYPES):  # 'a'.ljust(10**9)
            for arg in [*args, *kwargs.values()]:
                _sized(arg, f"calling {getattr(__obj, '__name__', 'a method')}")
        _spend()
        return _check_length(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)  # '{:>999999999}'.format(1)
        if wrapped is not None:
            _sized(getattr(value, "__self__", ""), "format")
        return wrapped


_env = _Sandbox(undefined=StrictUndefined, autoescape=False)
del _env.globals["lipsum"]  # lipsum(n=10**6): paragraphs of filler nobody sends
_env.globals["range"] = _range
_env.filters = {name: _guarded_filter(name, func) for name, func in _env.filters.items()}
_env.filters["rapport_loop"] = _loop


def _guard_loops(tree: nodes.Template) -> nodes.Template:
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, "rapport_loop", [], [], None, None)
    return tree


@lru_cache(maxsize=512)
def _compiled(source: str) -> Any:
    return _env.from_string(_guard_loops(_env.parse(source)))


def _render(source: str, context: dict[str, Any]) -> str:
    """Streams the output so a template is stopped as soon as it is over ``MAX_OUTPUT``."""
    token = _budget.set(_Budget())
    try:
        size = 0
        parts = []
        for part in _compiled(source).generate(context):
            size += len(part)
            if size > MAX_OUTPUT:
                raise TemplateLimit(f"the output is over the limit of {MAX_OUTPUT} characters")
            _spend()
            parts.append(part)
        return "".join(parts)
    finally:
        _budget.reset(token)


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
        return _render(source, context)
    except TemplateError as exc:  # includes SecurityError, UndefinedError and TemplateLimit
        raise DeliveryError(f"{field}: {exc.__class__.__name__}: {exc}", field) from None
    except RecursionError:
        raise DeliveryError(f"{field}: a macro calls itself without end", field) from None
    except Exception as exc:
        if type(exc).__module__.startswith("rapport."):  # a content function's own error
            raise
        # 1/0, 'a' + 1, int overflow ...: the template's mistake, said where
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
