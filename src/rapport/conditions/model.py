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

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class Compare(_Node):
    """``field op value``. ``field`` is a person attribute for ``Attr``; for event filters it
    is an event property (``price``) or an item property (``item.category``)."""

    field: str
    op: Op
    value: Scalar | list[Scalar] | Duration = None

    @model_validator(mode="after")
    def _shape(self) -> Compare:
        v = self.value
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
class Attr(Compare):
    """A person attribute (a column of the merged profile), e.g. ``city in [...]``."""

    kind: Literal["attr"] = "attr"


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
        return self


class Step(_Node):
    event: str
    where: list[Compare] = Field(default_factory=list)


class Sequence(_Node):
    """``A then B then C within T`` (skip-till-next-match; each step strictly later), optionally
    ``without X in between``; or ``A then not B within T`` (``then_not``: A happened and no B
    followed within T, judged once T has passed as of ``as_of``). Only occurrences inside
    ``window`` (default: all time) count."""

    kind: Literal["sequence"] = "sequence"
    steps: list[Step] = Field(min_length=1)
    within: Duration
    excluding: Step | None = None
    then_not: Step | None = None
    window: Window = Field(default_factory=Window)

    @model_validator(mode="after")
    def _shape(self) -> Sequence:
        if self.then_not is None and len(self.steps) < 2:
            raise ValueError("a sequence needs two steps, or one step and `then not`")
        return self


class EventIs(_Node):
    """For triggers only (the stream path): the current event is ``event`` and matches
    ``where``. The batch compiler refuses it."""

    kind: Literal["event"] = "event"
    event: str
    where: list[Compare] = Field(default_factory=list)


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
