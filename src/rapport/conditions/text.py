"""The readable text form of a condition: ``parse(text)`` and ``to_text(cond)``.

``parse(to_text(c)) == c`` for every tree, so the console can show a rule as a sentence and a
marketer can edit that sentence. The grammar (docs/conditions.md) reads like English::

    age >= 30 and city in ["上海", "北京"] and email is set
    did view_product where item.category = "fridge" and price >= 5000 at least 3 times
    sequence add_to_cart then not order_paid within 30 minutes
    sequence view_product as a next add_to_cart where item_id = a.item_id within 10 minutes
    sequence 3 times view_product within 10 minutes

Precedence: ``not`` > ``and`` > ``or``; parentheses group. A ``where`` clause takes every
``and``-joined comparison that follows it, so the printer parenthesises a behaviour leaf that
ends in one before another ``and``. Names are bare words (letters, digits, ``_``, dots) or
double-quoted strings; values are quoted strings, numbers, ``true``/``false``/``null``.

A hand-written recursive-descent parser: errors are ``ConditionError(message, "line L, column
C")`` saying what was expected and, for a mistyped operator, what was meant.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any, NoReturn

from pydantic import ValidationError

from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    RELATIVE,
    Agg,
    And,
    Attr,
    Compare,
    Condition,
    Did,
    Duration,
    EventIs,
    HasTag,
    InSegment,
    Not,
    Op,
    Or,
    Ref,
    Scalar,
    Sequence,
    Step,
    Unit,
    Window,
)

__all__ = ["parse", "to_text"]

#: a bare name: a word not starting with a digit, dotted parts allowed (``item.category``)
_WORD = r"[^\W\d]\w*(?:\.[^\W\d]\w*)*"
NAME = re.compile(_WORD)
_DATE = (
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
    r"(?:Z|[+-]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?)?(?![\w:])"
)
_TOKEN = re.compile(
    rf"""(?P<space>\s+)
      | (?P<date>{_DATE})
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<word>{_WORD})
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>[=!<>]+)
      | (?P<punct>[()\[\],:])
    """,
    re.VERBOSE | re.DOTALL,
)
SYMBOLS = ("=", "!=", "<", "<=", ">", ">=")
_MISTYPED = {"=>": ">=", "=<": "<=", "==": "=", "<>": "!=", "=!": "!="}
#: words the printer always quotes when they are names, so its output never reads two ways
KEYWORDS = frozenset(
    {
        *("and", "or", "not", "all", "any", "did", "has", "tag", "in", "audience", "segment"),
        *("sequence", "event", "where", "then", "within", "without", "between", "from"),
        *("before", "since", "last", "next", "the", "is", "set", "null", "true", "false"),
        *("contains", "starts", "with", "anniversary", "count", "sum", "avg", "min", "max"),
        *("distinct", "at", "least", "most", "time", "times", "do", "as"),
    }
)
#: words that start a condition (an attribute of that name is quoted, or followed by `=`...)
_STARTERS = frozenset({"not", "did", "has", "in", "sequence", "event", "all", "any"})
#: words a name can never be (a name here is almost always a forgotten name)
_NEVER_NAMES = frozenset({"and", "or", "not", "where", "then", "within", "without"})
#: words that can follow a field to start a comparison
_COMPARE_WORDS = frozenset({"between", "in", "not", "contains", "starts", "is", "anniversary"})
_WORD_OPS = ["between", "in", "not in", "contains", "starts with", "is set", "is not set"]
_WORD_OPS += ["in last", "in next", "anniversary in next"]
_UNITS = {
    "minute": Unit.minutes,
    "minutes": Unit.minutes,
    "min": Unit.minutes,
    "mins": Unit.minutes,
    "m": Unit.minutes,
    "hour": Unit.hours,
    "hours": Unit.hours,
    "h": Unit.hours,
    "day": Unit.days,
    "days": Unit.days,
    "d": Unit.days,
}
_AGGS: tuple[Agg, ...] = ("count", "sum", "avg", "min", "max", "distinct")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/"}


# -- tokens ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # word | string | number | date | op | punct | end
    text: str
    pos: int
    value: Any = None

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words

    def shown(self) -> str:
        return "the end of the text" if self.kind == "end" else f"`{self.text}`"


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column}"


def _unescape(body: str, text: str, pos: int) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "u":
            if len(code) != 5:
                raise ConditionError(
                    "`\\u` needs four hex digits", _where(text, pos + match.start())
                )
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    out = re.sub(r"\\(u[0-9a-fA-F]{0,4}|.)", one, body, flags=re.DOTALL)
    if any("\ud800" <= ch <= "\udfff" for ch in out):  # a \ud83d\ude00 pair becomes one char
        out = out.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
    return out


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _operator_error(op: str, text: str, pos: int) -> NoReturn:
    guess = _MISTYPED.get(op) or next(iter(difflib.get_close_matches(op, SYMBOLS, 1, 0.3)), None)
    hint = f"; did you mean `{guess}`?" if guess else f" (use one of {', '.join(SYMBOLS)})"
    raise ConditionError(f"unknown operator `{op}`{hint}", _where(text, pos))


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos] in "\"'":
                raise ConditionError(
                    "unterminated string: add the closing quote", _where(text, pos)
                )
            raise ConditionError(f"unexpected character `{text[pos]}`", _where(text, pos))
        kind = match.lastgroup or ""
        raw = match.group()
        if kind == "string":
            tokens.append(Token(kind, raw, pos, _unescape(raw[1:-1], text, pos + 1)))
        elif kind == "number":
            tokens.append(Token(kind, raw, pos, _number(raw)))
        elif kind == "op":
            if raw not in SYMBOLS:
                _operator_error(raw, text, pos)
            tokens.append(Token(kind, raw, pos))
        elif kind != "space":
            tokens.append(Token(kind, raw, pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# -- parsing -----------------------------------------------------------------------------------
def parse(text: str) -> Condition:
    """The tree of ``text``; ``ConditionError`` (with line and column) if it is not one."""
    parser = _Parser(text)
    try:
        return parser.parse()
    except RecursionError:
        raise ConditionError("the condition is nested too deeply", _where(text, 0)) from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        #: the step names defined so far while parsing a sequence (None: not in one)
        self.aliases: list[str] | None = None
        #: in a `without` step: the first step's name, the only one it may compare with
        self.first_only: str | None = None

    # helpers
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def fail(self, message: str, token: Token | None = None) -> NoReturn:
        token = token or self.peek()
        raise ConditionError(message, _where(self.text, token.pos))

    def accept(self, *words: str) -> Token | None:
        if self.peek().is_word(*words):
            return self.next()
        return None

    def accept_punct(self, char: str) -> bool:
        if self.peek().kind == "punct" and self.peek().text == char:
            self.i += 1
            return True
        return False

    def expect_word(self, word: str, after: Token) -> Token:
        if not self.peek().is_word(word):
            self.fail(f"expected `{word}` after `{after.text}`, found {self.peek().shown()}")
        return self.next()

    def expect_punct(self, char: str, what: str) -> None:
        if not self.accept_punct(char):
            self.fail(f"expected `{char}` {what}, found {self.peek().shown()}")

    def build(self, token: Token, model: Any, **fields: Any) -> Any:
        """A node, with the model's own complaint turned into an error at ``token``."""
        try:
            return model(**fields)
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            self.fail(message, token)

    def name(self, what: str, after: Token) -> str:
        token = self.peek()
        if token.kind == "string":
            self.i += 1
            return str(token.value)
        if token.kind == "word" and token.text.lower() not in _NEVER_NAMES:
            self.i += 1
            return token.text
        hint = (
            f' (a name that is a keyword is quoted: "{token.text}")' if token.kind == "word" else ""
        )
        self.fail(f"expected {what} after `{after.text}`, found {token.shown()}{hint}")

    # grammar
    def parse(self) -> Condition:
        cond = self.or_()
        end = self.peek()
        if end.kind != "end":
            if end.text == ")":
                self.fail("unmatched `)`")
            self.fail(f"unexpected {end.shown()}; expected `and`, `or` or the end of the condition")
        return cond

    def or_(self) -> Condition:
        items = [self.and_()]
        while self.accept("or"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(any=items)

    def and_(self) -> Condition:
        items = [self.not_()]
        while self.accept("and"):
            items.append(self.not_())
        return items[0] if len(items) == 1 else And(all=items)

    def not_(self) -> Condition:
        if self.peek().is_word("not") and self.peek(1).kind != "op":
            self.next()
            return Not(cond=self.not_())
        return self.primary()

    def starts_attr(self, ahead: int) -> bool:
        """Whether the token ``ahead`` is an attribute name (not a word starting a construct)."""
        token = self.peek(ahead)
        if token.kind == "string":
            return True
        if token.kind != "word":
            return False
        return token.text.lower() not in _STARTERS or self.peek(ahead + 1).kind == "op"

    def starts_compare(self, ahead: int) -> bool:
        token = self.peek(ahead)
        return token.kind == "op" or token.is_word(*_COMPARE_WORDS)

    def primary(self) -> Condition:
        token = self.peek()
        if self.accept_punct("("):
            cond = self.or_()
            self.expect_punct(")", "to close the `(`")
            return cond
        if (
            token.is_word("all", "any")
            and self.peek(1).text == "("
            and self.peek(1).kind == "punct"
        ):
            self.i += 2
            inner = self.or_()
            self.expect_punct(")", f"to close `{token.text}(`")
            return And(all=[inner]) if token.is_word("all") else Or(any=[inner])
        if self.starts_attr(0):
            field = self.name("an attribute", token)
            return self.compare(Attr, field, token)
        if token.is_word("did"):
            return self.did()
        if token.is_word("has"):
            return self.has_tag()
        if token.is_word("in"):
            return self.in_segment()
        if token.is_word("sequence"):
            return self.sequence()
        if token.is_word("event"):
            self.next()
            event = self.name("an event name", token)
            return self.build(token, EventIs, event=event, where=self.where())
        if token.kind == "end":
            self.fail("expected a condition, found the end of the text")
        self.fail(
            f"expected a condition (an attribute, did, has tag, in segment...), found "
            f"{token.shown()}"
        )

    # comparisons: attributes and event filters
    def compare(self, model: type[Compare], field: str, start: Token) -> Any:
        token = self.next()
        value: Any = None
        op: Op
        if token.kind == "op":
            op = Op(token.text)
            value = self.scalar(token)
        elif token.is_word("between"):
            op = Op.between
            low = self.scalar(token)
            value = [low, self.scalar(self.expect_word("and", self.tokens[self.i - 1]))]
        elif token.is_word("in"):
            if self.peek().kind == "punct" and self.peek().text == "[":
                op, value = Op.in_, self.list_(token)
            else:
                self.accept("the")
                which = self.next()
                if not which.is_word("last", "next"):
                    self.fail(
                        f"expected `[`, `last` or `next` after `in`, found {which.shown()}", which
                    )
                op = Op.in_last if which.is_word("last") else Op.in_next
                value = self.duration(which)
        elif token.is_word("not"):
            self.expect_word("in", token)
            op, value = Op.not_in, self.list_(token)
        elif token.is_word("contains"):
            op, value = Op.contains, self.scalar(token)
        elif token.is_word("starts"):
            op, value = Op.starts_with, self.scalar(self.expect_word("with", token))
        elif token.is_word("is"):
            negated = self.accept("not") is not None
            what = self.next()
            if not what.is_word("set", "null"):
                self.fail(
                    f"expected `set` after `is{' not' if negated else ''}`, found {what.shown()}",
                    what,
                )
            op = Op.is_set if negated == what.is_word("null") else Op.not_set
        elif token.is_word("anniversary"):
            op = Op.anniversary_in_next
            if not self.accept("within"):
                self.expect_word("next", self.expect_word("in", token))
            value = self.duration(self.tokens[self.i - 1])
        else:
            guess = difflib.get_close_matches(token.text.lower(), _WORD_OPS, 1, 0.6)
            hint = (
                f"; did you mean `{guess[0]}`?"
                if guess
                else (
                    " (=, !=, <, <=, >, >=, between, in, not in, contains, starts with, is set, "
                    "is not set, in last, in next, anniversary in next)"
                )
            )
            self.fail(
                f"expected an operator after `{start.text}`, found {token.shown()}{hint}", token
            )
        return self.build(token, model, field=field, op=op, value=value)

    def scalar(self, after: Token) -> Scalar:
        token = self.peek()
        if token.kind in ("string", "number"):
            self.i += 1
            value: Scalar = token.value
            return value
        if token.kind == "date":  # a bare date as a value is the text of the date
            self.i += 1
            return token.text
        if token.kind == "word" and "." in token.text and self.aliases is not None:
            alias = token.text.split(".", 1)[0]
            if alias not in self.aliases:
                known = ", ".join(f"`{a}`" for a in self.aliases) or "none yet"
                self.fail(
                    f"`{token.text}` refers to no earlier step: name a step with `as {alias}` "
                    f"before this one (named so far: {known})"
                )
            if self.first_only is not None and alias != self.first_only:
                self.fail(
                    "`without` compares only with the first step (the events between the "
                    "first and the last are judged as they come)"
                )
            self.i += 1
            return Ref(ref=token.text)  # type: ignore[return-value]
        if token.is_word("true", "false", "null"):
            self.i += 1
            return {"true": True, "false": False, "null": None}[token.text.lower()]
        hint = f' (text is quoted: "{token.text}")' if token.kind == "word" else ""
        self.fail(f"expected a value after `{after.text}`{hint}")

    def list_(self, after: Token) -> list[Scalar]:
        self.expect_punct("[", f'after `{after.text}` (a list such as ["a", "b"])')
        values: list[Scalar] = []
        while not self.accept_punct("]"):
            values.append(self.scalar(self.tokens[self.i - 1]))
            if not self.accept_punct(","):
                self.expect_punct("]", "or `,` in the list")
                break
        return values

    def duration(self, after: Token) -> Duration:
        amount = self.peek()
        if amount.kind != "number" or not isinstance(amount.value, int) or amount.value <= 0:
            self.fail(
                f"expected a duration such as `7 days` after `{after.text}` (a whole "
                "number of minutes, hours or days)"
            )
        self.i += 1
        unit = self.peek()
        if unit.kind != "word" or unit.text.lower() not in _UNITS:
            self.fail(
                f"expected a unit (minutes, hours or days) after `{amount.text}`, found "
                f"{unit.shown()}"
            )
        self.i += 1
        return Duration(amount=amount.value, unit=_UNITS[unit.text.lower()])

    def date(self, after: Token) -> datetime:
        token = self.next()
        if token.kind in ("date", "string"):
            text = str(token.value if token.kind == "string" else token.text)
            try:
                if len(text) == 10:
                    return datetime.combine(datetime.fromisoformat(text).date(), time(), UTC)
                found = datetime.fromisoformat(text)
            except ValueError:
                pass
            else:
                return found if found.tzinfo is not None else found.replace(tzinfo=UTC)
        self.fail(f"expected a date such as 2026-01-01 after `{after.text}`", token)

    # behaviour
    def where(self) -> list[Compare]:
        where_ = self.accept("where")
        if where_ is None:
            return []
        field = self.peek()
        filters = [self.compare(Compare, self.name("a property", where_), field)]
        while self.peek().is_word("and") and self.starts_attr(1) and self.starts_compare(2):
            and_ = self.next()
            field = self.peek()
            filters.append(self.compare(Compare, self.name("a property", and_), field))
        return filters

    def window(self) -> Window:
        token = self.peek()
        if token.is_word("in") and (self.peek(1).is_word("last", "the")):
            self.i += 1
            self.accept("the")
            return Window(last=self.duration(self.expect_word("last", token)))
        if self.accept("between"):
            start = self.date(token)
            end = self.date(self.expect_word("and", self.tokens[self.i - 1]))
            return self.build(token, Window, start=start, end=end)
        if self.accept("from"):
            return Window(start=self.date(token))
        if self.accept("before"):
            return Window(end=self.date(token))
        if self.accept("since"):
            if self.peek().kind == "date":
                return Window(start=self.date(token))
            return Window(since_event=self.name("an event or a date", token))
        return Window()

    def did(self) -> Condition:
        start = self.next()
        negated = self.accept("not") is not None
        self.accept("do")
        event = self.name("an event name", start)
        where = self.where()
        self.accept_punct(",")
        measure: dict[str, Any] = {}
        token = self.peek()
        if token.is_word("at") and self.peek(1).is_word("least", "most"):
            least = self.peek(1).is_word("least")
            self.i += 2
            bound = self.peek()
            if bound.kind != "number":
                self.fail(f"expected a number after `{self.tokens[self.i - 1].text}`")
            self.i += 1
            if not self.accept("times", "time"):
                self.fail(f"expected `times` after `{bound.text}`")
            measure = {"op": Op.ge if least else Op.le, "threshold": bound.value}
        elif token.is_word(*_AGGS):
            self.i += 1
            agg = token.text.lower()
            if self.accept_punct("("):
                measure["property"] = self.name("a property", token)
                self.expect_punct(")", f"to close `{agg}(`")
            op_token = self.next()
            if op_token.kind != "op":
                self.fail(f"expected a comparison such as `>= 3` after `{agg}`", op_token)
            bound = self.peek()
            if bound.kind != "number":
                self.fail(f"expected a number after `{op_token.text}`")
            self.i += 1
            measure |= {"agg": agg, "op": Op(op_token.text), "threshold": bound.value}
        self.accept_punct(",")
        window = self.window()
        did = self.build(start, Did, event=event, where=where, window=window, **measure)
        return Not(cond=did) if negated else did

    def step(self, after: Token, *, strict: bool = False, plain: bool = False) -> Step:
        """``[N times] event [as name] [where ...]``; ``plain``: no count and no name (the
        event of `then not` / `without`)."""
        token = self.peek()
        times = 1
        if token.kind == "number" and self.peek(1).is_word("times", "time"):
            if plain or not isinstance(token.value, int) or token.value < 1:
                self.fail(
                    "a count is a whole number before a step: `3 times view_product`"
                    if not plain
                    else f"`{after.text}` takes an event and filters, not a count"
                )
            times = token.value
            self.i += 2
            after = self.tokens[self.i - 1]
        event_token = self.peek()
        event = self.name("an event name", after)
        alias = None
        if as_ := self.accept("as"):
            alias_token = self.peek()
            if plain:
                self.fail(f"`{after.text}` takes an event and filters, not a name", as_)
            if (
                alias_token.kind != "word"
                or not NAME.fullmatch(alias_token.text)
                or ("." in alias_token.text or alias_token.text.lower() in KEYWORDS)
            ):
                self.fail(
                    f"expected a step name (a plain word) after `as`, found {alias_token.shown()}"
                )
            alias = alias_token.text
            assert self.aliases is not None
            if alias in self.aliases:
                self.fail(f"`{alias}` already names a step", alias_token)
            if times > 1:
                self.fail("a counted step cannot be named: which occurrence would it be?", as_)
            self.i += 1
        where = self.where()
        if alias is not None:
            assert self.aliases is not None
            self.aliases.append(alias)
        return self.build(
            event_token, Step, event=event, where=where, alias=alias, next=strict, times=times
        )

    def sequence(self) -> Sequence:
        start = self.next()
        outer, self.aliases = self.aliases, []
        try:
            steps = [self.step(start)]
            then_not = None
            while then := self.accept("then", "next"):
                if not_ := self.accept("not"):
                    if then.is_word("next"):
                        self.fail("`not` follows `then`: `A then not B within T`", not_)
                    then_not = self.step(not_, plain=True)
                    break
                steps.append(self.step(then, strict=then.is_word("next")))
            if not self.peek().is_word("within"):
                self.fail(
                    "expected `within` and a duration to end the sequence, found "
                    f"{self.peek().shown()}"
                )
            within = self.duration(self.next())
            excluding = None
            if without := self.accept("without"):
                self.first_only = steps[0].alias or ""
                excluding = self.step(without, plain=True)
        finally:
            self.aliases, self.first_only = outer, None
        return self.build(
            start,
            Sequence,
            steps=steps,
            within=within,
            excluding=excluding,
            then_not=then_not,
            window=self.window(),
        )

    def has_tag(self) -> HasTag:
        start = self.next()
        tag_word = self.expect_word("tag", start)
        tag = self.name("a tag name", tag_word)
        values: list[str] | None = None
        token = self.peek()
        if token.kind == "op" and token.text == "=":
            self.i += 1
            values = [self.tag_value(token)]
        elif token.is_word("in") and self.peek(1).text == "[" and self.peek(1).kind == "punct":
            self.i += 1
            self.expect_punct("[", "")
            values = []
            while not self.accept_punct("]"):
                values.append(self.tag_value(self.tokens[self.i - 1]))
                if not self.accept_punct(","):
                    self.expect_punct("]", "or `,` in the list")
                    break
        return self.build(start, HasTag, tag=tag, values=values)

    def tag_value(self, after: Token) -> str:
        token = self.peek()
        if token.kind in ("number", "date"):  # tag values are text; 3 means "3"
            self.i += 1
            return token.text
        value = self.scalar(after)
        if not isinstance(value, str):
            self.fail("tag values are text: quote them", token)
        return value

    def in_segment(self) -> InSegment:
        start = self.next()
        kind = self.next()
        if not kind.is_word("segment", "audience"):
            self.fail(f"expected `segment` or `audience` after `in`, found {kind.shown()}", kind)
        segment = self.name("a segment name", kind)
        bucket = None
        if self.peek().kind == "punct" and self.peek().text == ":":
            colon = self.next()
            bucket = self.name("a bucket name", colon)
        return self.build(start, InSegment, segment=segment, bucket=bucket)


# -- printing ----------------------------------------------------------------------------------
def to_text(cond: Condition) -> str:
    """The text form of ``cond``: ``parse(to_text(cond)) == cond``."""
    return _cond(cond)[0]


def _cond(cond: Condition) -> tuple[str, bool]:
    """The text, and whether it ends in a ``where`` clause that a following ``and`` would
    extend (the caller then parenthesises it)."""
    if isinstance(cond, And | Or):
        items = cond.all if isinstance(cond, And) else cond.any
        if len(items) == 1:
            return f"{'all' if isinstance(cond, And) else 'any'}({_cond(items[0])[0]})", False
        parts = []
        tail = False
        for index, item in enumerate(items):
            text, tail = _cond(item)
            last = index == len(items) - 1
            if (
                isinstance(item, Or)
                or type(item) is type(cond)
                or (tail and not last and isinstance(cond, And))
            ):
                text, tail = f"({text})", False
            parts.append(text)
        return f" {'and' if isinstance(cond, And) else 'or'} ".join(parts), tail
    if isinstance(cond, Not):
        if isinstance(cond.cond, And | Or) and len(_items(cond.cond)) > 1:
            return f"not ({_cond(cond.cond)[0]})", False
        text, tail = _cond(cond.cond)
        return f"not {text}", tail
    if isinstance(cond, Attr):
        return _compare(cond), False
    if isinstance(cond, HasTag):
        text = f"has tag {_name(cond.tag)}"
        if cond.values is not None:
            if len(cond.values) == 1:
                text += f" = {_value(cond.values[0])}"
            else:
                text += f" in {_list(cond.values)}"
        return text, False
    if isinstance(cond, InSegment):
        bucket = "" if cond.bucket is None else f": {_name(cond.bucket)}"
        return f"in segment {_name(cond.segment)}{bucket}", False
    if isinstance(cond, Did):
        parts = [f"did {_name(cond.event)}{_where_text(cond.where)}"]
        measure = _measure(cond)
        window = _window(cond.window)
        parts += [p for p in (measure, window) if p]
        return " ".join(parts), bool(cond.where) and not measure and not window
    if isinstance(cond, Sequence):
        text = "sequence " + _step(cond.steps[0])
        text += "".join(f" {'next' if s.next else 'then'} {_step(s)}" for s in cond.steps[1:])
        if cond.then_not is not None:
            text += f" then not {_step(cond.then_not)}"
        text += f" within {_duration(cond.within)}"
        tail = False
        if cond.excluding is not None:
            text += f" without {_step(cond.excluding)}"
            tail = bool(cond.excluding.where)
        window = _window(cond.window)
        if window:
            text, tail = f"{text} {window}", False
        return text, tail
    if isinstance(cond, EventIs):
        return f"event {_name(cond.event)}{_where_text(cond.where)}", bool(cond.where)
    raise TypeError(f"not a condition: {cond!r}")


def _items(group: And | Or) -> list[Condition]:
    return group.all if isinstance(group, And) else group.any


def _name(name: str) -> str:
    if NAME.fullmatch(name) and name.lower() not in KEYWORDS:
        return name
    return json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, Ref):
        if not NAME.fullmatch(value.ref) or value.alias.lower() in KEYWORDS:
            raise ConditionError(f"`{value.ref}` has no text form: use plain names")
        return value.ref
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConditionError(f"{value} has no text form: use a finite number")
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _list(values: list[Any]) -> str:
    return "[" + ", ".join(_value(v) for v in values) + "]"


def _duration(d: Duration) -> str:
    unit = d.unit.value[:-1] if d.amount == 1 else d.unit.value
    return f"{d.amount} {unit}"


def _compare(c: Compare) -> str:
    field = _name(c.field)
    op, value = c.op, c.value
    if op in (Op.is_set, Op.not_set):
        return f"{field} {op.value}"
    if op in RELATIVE:
        assert isinstance(value, Duration)
        return f"{field} {op.value} {_duration(value)}"
    if op is Op.between:
        assert isinstance(value, list)
        return f"{field} between {_value(value[0])} and {_value(value[1])}"
    if op in (Op.in_, Op.not_in):
        assert isinstance(value, list)
        return f"{field} {op.value} {_list(value)}"
    return f"{field} {op.value} {_value(value)}"


def _where_text(where: list[Compare]) -> str:
    return " where " + " and ".join(_compare(c) for c in where) if where else ""


def _step(step: Step) -> str:
    count = f"{step.times} times " if step.times != 1 else ""
    alias = f" as {step.alias}" if step.alias is not None else ""
    return count + _name(step.event) + alias + _where_text(step.where)


def _threshold(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return _value(value)


def _measure(did: Did) -> str:
    plain_count = did.agg == "count" and did.property is None
    if plain_count and did.op is Op.ge and did.threshold == 1:
        return ""
    if plain_count and did.op in (Op.ge, Op.le) and did.threshold.is_integer():
        bound = "at least" if did.op is Op.ge else "at most"
        return f"{bound} {_threshold(did.threshold)} times"
    what = did.agg if did.property is None else f"{did.agg}({_name(did.property)})"
    return f"{what} {did.op.value} {_threshold(did.threshold)}"


def _date(value: datetime) -> str:
    offset = value.utcoffset()
    if offset is None or not offset:
        utc = value.replace(tzinfo=None) if offset is None else value.astimezone(UTC)
        utc = utc.replace(tzinfo=None)
        if utc.time() == time():
            return utc.date().isoformat()
        return utc.isoformat() + "Z"
    return value.isoformat()


def _window(window: Window) -> str:
    if window.last is not None:
        return f"in last {_duration(window.last)}"
    if window.since_event is not None:
        return f"since {_name(window.since_event)}"
    if window.start is not None and window.end is not None:
        return f"between {_date(window.start)} and {_date(window.end)}"
    if window.start is not None:
        return f"since {_date(window.start)}"
    if window.end is not None:
        return f"before {_date(window.end)}"
    return ""
