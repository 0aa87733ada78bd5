"""FHIR date/dateTime/instant values as UTC ranges [low, high): the implicit precision of a value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fhir_api.errors import BadRequest

_PATTERN = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DateRange:
    low: datetime
    high: datetime  # exclusive


def _add_months(t: datetime, months: int) -> datetime:
    year, month = divmod(t.month - 1 + months, 12)
    return t.replace(year=t.year + year, month=month + 1)


def parse_range(value: str, param: str = "date") -> DateRange:
    """'2024' -> [2024-01-01, 2025-01-01); '2024-03-05T10:00Z' -> that minute. Zone-less times are UTC."""
    match = _PATTERN.match(value.strip())
    if not match:
        raise BadRequest(f"Parameter {param}: '{value}' is not a FHIR date, dateTime or instant")
    p = match.groupdict()
    try:
        tz = UTC
        if p["tz"] and p["tz"] != "Z":
            sign = 1 if p["tz"][0] == "+" else -1
            hours, minutes = int(p["tz"][1:3]), int(p["tz"][4:6])
            from datetime import timezone

            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        low = datetime(
            int(p["y"]),
            int(p["m"] or 1),
            int(p["d"] or 1),
            int(p["H"] or 0),
            int(p["M"] or 0),
            int(p["S"] or 0),
            round(float(p["f"]) * 1_000_000) if p["f"] else 0,
            tzinfo=tz,
        )
    except ValueError as exc:
        raise BadRequest(f"Parameter {param}: '{value}' is not a valid date") from exc
    try:
        if p["f"]:
            digits = len(p["f"]) - 1
            high = low + timedelta(microseconds=10 ** max(0, 6 - digits))
        elif p["S"]:
            high = low + timedelta(seconds=1)
        elif p["M"]:
            high = low + timedelta(minutes=1)
        elif p["d"]:
            high = low + timedelta(days=1)
        elif p["m"]:
            high = _add_months(low, 1)
        else:
            high = low.replace(year=low.year + 1)
    except (OverflowError, ValueError):  # a range ending after 9999-12-31: open above
        high = _LATEST
    return DateRange(_utc(low), _utc(high))


def _utc(t: datetime) -> datetime:
    """In UTC, clamped to the calendar (an offset can move 0001-01-01 before it, or 9999-12-31 after)."""
    try:
        return t.astimezone(UTC)
    except (OverflowError, ValueError):
        return _EARLIEST if t.year == 1 else _LATEST
