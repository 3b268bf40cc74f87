"""The condition tree: one typed model for every rule in the product (DESIGN.md).

Audiences, rule tags, lead rules, campaign triggers and suppressions are all a ``Condition``:
``And`` / ``Or`` / ``Not`` over leaves. The JSON form is the pydantic dump (``kind`` tells the
node apart); the text form lives in ``rapport.conditions.text``; the two compilers in
``to_ibis`` (batch, the warehouse) and ``to_stream`` (per event, a person's state), with a plain
interpreter in ``reference`` that both must agree with.

Time is always relative to an explicit ``as_of`` given at evaluation, never the wall clock, so
the batch and the stream path (and a test) give the same answer for the same moment.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

Scalar = str | int | float | bool | None


class Op(StrEnum):
    eq = "="
    ne = "!="
    lt = "<"
    le = "<="
    gt = ">"
    ge = ">="
    between = "between"  # value: [low, high], both inclusive
    in_ = "in"  # value: list
    not_in = "not in"
    contains = "contains"  # text contains; for multi-valued fields: has the element
    starts_with = "starts with"
    is_set = "is set"  # value: none
    not_set = "is not set"
    in_last = "in last"  # a date/time within the last ``value`` (a Duration) before as_of
    in_next = "in next"  # a date/time within the next ``value`` after as_of
    anniversary_in_next = "anniversary in next"  # month-day within the next N days (birthday)


UNARY = frozenset({Op.is_set, Op.not_set})
RELATIVE = frozenset({Op.in_last, Op.in_next, Op.anniversary_in_next})


class Unit(StrEnum):
    minutes = "minutes"
    hours = "hours"
    days = "days"


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Duration(_Node):
    amount: int = Field(gt=0)
    unit: Unit = Unit.days

    def seconds(self) -> int:
        return self.amount * {"minutes": 60, "hours": 3600, "days": 86400}[self.unit]


#: the ops a step reference compares with (one value on each side)
REF_OPS = frozenset({Op.eq, Op.ne, Op.lt, Op.le, Op.gt, Op.ge})
#: Rapport's own events (lifecycle, audience entries and exits): they never break a strict
#: contiguity (``A next B``), since the person did nothing
SYSTEM_EVENTS = frozenset({"lifecycle_changed", "audience_entered", "audience_exited"})


class Ref(_Node):
    """A value taken from an earlier step's event, in a sequence step's filter:
    ``{"ref": "a.item_id"}`` (event property ``item_id`` of the step named ``a``) or
    ``{"ref": "a.item.category"}`` (a property of that event's item)."""

    ref: str = Field(pattern=r"^[^.]+\..+$")

    @property
    def alias(self) -> str:
        return self.ref.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.ref.split(".", 1)[1]


class Compare(_Node):
    """``field op value``. ``field`` is a person attribute for ``Attr``; for event filters it
    is an event property (``price``) or an item property (``item.category``). In a sequence
    step the value may be a ``Ref`` to an earlier step's event."""

    field: str
    op: Op
    value: Scalar | list[Scalar] | Duration | Ref = None

    @model_validator(mode="after")
    def _shape(self) -> Compare:
        v = self.value
        if isinstance(v, Ref):
            if self.op not in REF_OPS:
                raise ValueError(f"`{self.op}` cannot compare with a step reference")
            return self
        if self.op in UNARY and v is not None:
            raise ValueError(f"`{self.op}` takes no value")
        if self.op in (Op.in_, Op.not_in) and not isinstance(v, list):
            raise ValueError(f"`{self.op}` needs a list of values")
        if self.op is Op.between and not (isinstance(v, list) and len(v) == 2):
            raise ValueError("`between` needs [low, high]")
        if self.op in RELATIVE and not isinstance(v, Duration):
            raise ValueError(f"`{self.op}` needs a duration such as 7 days")
        if self.op not in UNARY | RELATIVE | {Op.in_, Op.not_in, Op.between} and (
            v is None or isinstance(v, list | Duration)
        ):
            raise ValueError(f"`{self.op}` needs one value")
        return self


# -- leaves --------------------------------------------------------------------------------------
def _no_refs(where: list[Compare], what: str) -> None:
    for c in where:
        if isinstance(c.value, Ref):
            raise ValueError(f"{what} cannot refer to a step (`{c.value.ref}`): only sequences can")


class Attr(Compare):
    """A person attribute (a column of the merged profile), e.g. ``city in [...]``."""

    kind: Literal["attr"] = "attr"

    @model_validator(mode="after")
    def _plain(self) -> Attr:
        _no_refs([self], "an attribute")
        return self


class HasTag(_Node):
    """The person carries the tag (with one of ``values``, when given)."""

    kind: Literal["tag"] = "tag"
    tag: str
    values: list[str] | None = None


class InSegment(_Node):
    """The person is in an audience, or in a bucket of a segmentation (``bucket`` set)."""

    kind: Literal["segment"] = "segment"
    segment: str
    bucket: str | None = None


#: how behaviour is measured; ``distinct`` = number of distinct values of the property
Agg = Literal["count", "sum", "avg", "min", "max", "distinct"]


class Window(_Node):
    """When the behaviour counts: the last N units before as_of, between two instants (start
    inclusive, end exclusive), or since the person's latest ``since_event`` (none: never)."""

    last: Duration | None = None
    start: datetime | None = None
    end: datetime | None = None
    since_event: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Window:
        given = [self.last is not None, self.start is not None or self.end is not None]
        given.append(self.since_event is not None)
        if sum(given) > 1:
            raise ValueError("a window is one of: last N units, between dates, since an event")
        return self


class Did(_Node):
    """``did <event> [where ...] <measure> <op> <threshold> [in window]``.

    Default measure: count >= 1 ("did it at all"). "Did not" is ``Not(Did(...))``.
    """

    kind: Literal["did"] = "did"
    event: str
    where: list[Compare] = Field(default_factory=list)
    agg: Agg = "count"
    property: str | None = None  # for sum/avg/min/max/distinct
    op: Op = Op.ge
    threshold: float = 1
    window: Window = Field(default_factory=Window)

    @model_validator(mode="after")
    def _measure(self) -> Did:
        if self.agg != "count" and not self.property:
            raise ValueError(f"`{self.agg}` needs the property it aggregates")
        if self.op not in (Op.eq, Op.ne, Op.lt, Op.le, Op.gt, Op.ge):
            raise ValueError("a behaviour threshold compares with =, !=, <, <=, >, >=")
        _no_refs(self.where, "a behaviour filter")
        return self


class Step(_Node):
    """One step of a sequence. ``next``: the step's event is the person's very next event
    after the previous step's (strict contiguity; no event other than ``SYSTEM_EVENTS`` in
    between) instead of any later one. ``times``: that many occurrences, each strictly later
    (the same as the step written ``times`` times, joined by ``then``). ``alias`` names the
    step's event so that later filters can compare with its properties (``Ref``)."""

    event: str
    where: list[Compare] = Field(default_factory=list)
    alias: str | None = Field(default=None, pattern=r"^[^\W\d]\w*$")
    next: bool = False
    times: int = Field(default=1, ge=1, le=100)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Plain steps dump as before these options existed (stored rules stay the same)."""
        out: dict[str, Any] = handler(self)
        if not self.next:
            out.pop("next", None)
        if self.times == 1:
            out.pop("times", None)
        return out


def refs(where: list[Compare]) -> list[tuple[int, Ref]]:
    """The step references among ``where`` filters (with the filter's index)."""
    return [(i, c.value) for i, c in enumerate(where) if isinstance(c.value, Ref)]


def sequence_problems(seq: Sequence) -> list[tuple[str, str]]:
    """What is wrong with a sequence's steps, as (path below the sequence, message): shapes
    the types allow but the semantics do not define. The model refuses the first; the
    validator (``rapport.conditions.validate``) lists them all."""
    out: list[tuple[str, str]] = []
    if seq.steps[0].next:
        out.append(("steps[0].next", "the first step has no step before it to be `next` to"))
    named: dict[str, int] = {}
    for i, step in enumerate(seq.steps):
        for k, ref in refs(step.where):
            if ref.alias not in named:
                out.append((f"steps[{i}].where[{k}].value", _unknown_alias(ref, named)))
        if step.alias is not None:
            if step.alias in named:
                out.append((f"steps[{i}].alias", f"`{step.alias}` already names a step"))
            elif step.times > 1:
                out.append(
                    (
                        f"steps[{i}].alias",
                        "a counted step cannot be named: which occurrence would it be?",
                    )
                )
            named.setdefault(step.alias, i)
    for name in ("excluding", "then_not"):
        extra: Step | None = getattr(seq, name)
        if extra is None:
            continue
        if extra.next or extra.times != 1 or extra.alias is not None:
            out.append((name, f"`{_WORDS[name]}` takes an event and filters only"))
        for k, ref in refs(extra.where):
            if ref.alias not in named:
                out.append((f"{name}.where[{k}].value", _unknown_alias(ref, named)))
            elif name == "excluding" and ref.alias != seq.steps[0].alias:
                out.append(
                    (
                        f"{name}.where[{k}].value",
                        "`without` compares only with the first step (the events between "
                        "the first and the last are judged as they come)",
                    )
                )
    return out


_WORDS = {"excluding": "without", "then_not": "then not"}


def _unknown_alias(ref: Ref, named: dict[str, int]) -> str:
    known = ", ".join(f"`{a}`" for a in named) or "none yet"
    return (
        f"`{ref.ref}` refers to no earlier step: name a step with `as {ref.alias}` before "
        f"this one (named so far: {known})"
    )


class Sequence(_Node):
    """``A then B then C within T`` (skip-till-next-match; each step strictly later), optionally
    ``without X in between``; or ``A then not B within T`` (``then_not``: A happened and no B
    followed within T, judged once T has passed as of ``as_of``). Only occurrences inside
    ``window`` (default: all time) count. Steps may be strict (``next``), counted (``times``)
    and compare with an earlier step's properties (``Ref``): see ``Step`` and
    docs/conditions.md "Sequences"."""

    kind: Literal["sequence"] = "sequence"
    steps: list[Step] = Field(min_length=1)
    within: Duration
    excluding: Step | None = None
    then_not: Step | None = None
    window: Window = Field(default_factory=Window)

    @model_validator(mode="after")
    def _shape(self) -> Sequence:
        if self.then_not is None and len(self.steps) < 2 and self.steps[0].times < 2:
            raise ValueError("a sequence needs two steps, or one step and `then not`")
        problems = sequence_problems(self)
        if problems:
            raise ValueError(f"{problems[0][0]}: {problems[0][1]}")
        return self


class EventIs(_Node):
    """For triggers only (the stream path): the current event is ``event`` and matches
    ``where``. The batch compiler refuses it."""

    kind: Literal["event"] = "event"
    event: str
    where: list[Compare] = Field(default_factory=list)

    @model_validator(mode="after")
    def _plain(self) -> EventIs:
        _no_refs(self.where, "an event trigger's filter")
        return self


# -- groups ------------------------------------------------------------------------------------
class And(_Node):
    kind: Literal["and"] = "and"
    all: list[Condition] = Field(min_length=1)


class Or(_Node):
    kind: Literal["or"] = "or"
    any: list[Condition] = Field(min_length=1)


class Not(_Node):
    kind: Literal["not"] = "not"
    cond: Condition


Condition = Annotated[
    And | Or | Not | Attr | HasTag | InSegment | Did | Sequence | EventIs,
    Field(discriminator="kind"),
]

for _model in (And, Or, Not):
    _model.model_rebuild()


class Rule(_Node):
    """A condition as the API and the definitions store it (the JSON form)."""

    condition: Condition

    @classmethod
    def parse(cls, data: Any) -> Condition:
        return cls.model_validate({"condition": data}).condition


def from_json(data: Any) -> Condition:
    """A condition from its JSON form (a dict with ``kind``); pydantic errors name the path."""
    return Rule.parse(data)


def to_json(cond: Condition) -> dict[str, Any]:
    return cond.model_dump(mode="json", exclude_none=True)
