import random

import pytest

from core.retry import Backoff, PermanentError, TransientError, retry_call


def test_retries_transient_then_succeeds():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("503")
        return "ok"

    assert retry_call(flaky, attempts=5, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2


def test_permanent_is_not_retried():
    calls = []

    def bad():
        calls.append(1)
        raise PermanentError("400")

    with pytest.raises(PermanentError):
        retry_call(bad, attempts=5, sleep=lambda s: None)
    assert len(calls) == 1


def test_unclassified_errors_are_not_retried():
    with pytest.raises(KeyError):
        retry_call(lambda: {}["x"], attempts=5, sleep=lambda s: None)


def test_gives_up_after_attempts_and_honours_retry_after():
    sleeps = []

    def always():
        raise TransientError("429", retry_after=7)

    with pytest.raises(TransientError):
        retry_call(always, attempts=3, sleep=sleeps.append)
    assert len(sleeps) == 2 and all(s >= 7 for s in sleeps)


def test_backoff_is_jittered_and_capped():
    b = Backoff(base_s=1, cap_s=4)
    rng = random.Random(1)
    delays = [b.delay(n, rng) for n in range(1, 20)]
    assert all(0 <= d <= 4 for d in delays)
    assert len(set(delays)) > 5
