"""The expire timer's arithmetic (RFC 1035 §3.3.13): when a secondary's zone expires and
how long its timer sleeps."""

from __future__ import annotations

from zoneslice.xfr.secondary import next_wake, time_to_expire


def test_time_to_expire() -> None:
    assert time_to_expire(1000.0, 3600, 1000.0) == 3600
    assert time_to_expire(1000.0, 3600, 4599.5) == 0.5
    assert time_to_expire(1000.0, 3600, 4600.0) == 0  # expired at the moment itself
    assert time_to_expire(1000.0, 3600, 9000.0) < 0


def test_next_wake_is_the_sooner_of_retry_and_expiry() -> None:
    assert next_wake(900.0, 2.5, expired=False) == 2.5  # expiry on time, not a retry late
    assert next_wake(1.0, 2.5, expired=False) == 1.0
    assert next_wake(900.0, -5.0, expired=False) == 0.0  # overdue: now
    assert next_wake(900.0, -5.0, expired=True) == 900.0  # already expired: only the retry
    assert next_wake(-1.0, 10.0, expired=False) == 0.0
