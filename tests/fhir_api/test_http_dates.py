"""``Last-Modified`` as werkzeug writes HTTP dates, without its detour through ``email.utils``."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from werkzeug.http import http_date

from fhir_api.http import last_modified


def test_last_modified_is_what_werkzeug_writes_for_any_instant():
    rng = random.Random(20261125)
    start = datetime(1970, 1, 1, tzinfo=UTC)
    zones = [UTC, timezone(timedelta(hours=10)), timezone(timedelta(hours=-5, minutes=-30))]
    for _ in range(5000):
        when = (start + timedelta(seconds=rng.uniform(0, 5e9))).astimezone(rng.choice(zones))
        assert last_modified(when) == http_date(when)
    naive = datetime(2026, 2, 28, 23, 59, 59, 999000)  # read as UTC, as werkzeug reads it
    assert last_modified(naive) == http_date(naive) == "Sat, 28 Feb 2026 23:59:59 GMT"
