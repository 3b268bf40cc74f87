"""What the log stores per event. A msgspec Struct: cheap to build on the hot path."""

from __future__ import annotations

import msgspec

#: the client's timestamp was too far from the server clock; server time was recorded instead
FLAG_CLOCK_SKEW = 1
#: the client's timestamp could not be parsed; server time was recorded instead
FLAG_BAD_TIMESTAMP = 2
#: the event came out of the quarantine (replayed after the tracking plan was fixed)
FLAG_REPLAYED = 4


class LogRecord(msgspec.Struct, frozen=True):
    source: str
    message_id: str
    type: str  # track | identify | page | screen | group | alias
    event: str | None  # track: the event name; page/screen: the name; else None
    user_id: str | None
    anonymous_id: str | None
    timestamp: str  # event time, ISO-8601 UTC (corrected for clock skew)
    received_at: str  # server time, ISO-8601 UTC
    payload: bytes  # the normalised Segment message, JSON
    flags: int = 0
