"""The one retry helper for I/O boundaries: exponential backoff with full jitter.

Only errors classified as transient are retried; anything else is raised at
once. Connectors classify their own errors by raising ``TransientError`` or
``PermanentError`` (or by passing ``is_transient``).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class TransientError(Exception):
    """A failure that may succeed when tried again (timeouts, 429, 5xx, broker unavailable)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """A failure that will fail again the same way (bad request, mapping conflict, 404)."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped."""

    base_s: float = 0.5
    cap_s: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling)


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    backoff: Backoff = Backoff(),
    is_transient: Callable[[BaseException], bool] | None = None,
    what: str = "call",
    sleep: Callable[[float], None] = time.sleep,
    deadline_s: float | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors.

    ``attempts`` counts the first call; ``attempts=0`` means retry forever
    (bounded by ``deadline_s`` when given). A ``TransientError`` with
    ``retry_after`` waits at least that long.
    """
    classify = is_transient or (lambda exc: isinstance(exc, TransientError))
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if isinstance(exc, PermanentError) or not classify(exc):
                raise
            out_of_attempts = attempts and attempt >= attempts
            wait = backoff.delay(attempt)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after:
                wait = max(wait, float(retry_after))
            out_of_time = deadline_s is not None and time.monotonic() - started + wait > deadline_s
            if out_of_attempts or out_of_time:
                log.warning("retry gave_up what=%s attempts=%d error=%r", what, attempt, exc)
                raise
            log.info("retry what=%s attempt=%d wait_s=%.2f error=%r", what, attempt, wait, exc)
            sleep(wait)


def retrying(**kwargs) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator form of :func:`retry_call`."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def inner(*a, **kw):
            return retry_call(lambda: fn(*a, **kw), what=kwargs.pop("what", fn.__qualname__), **kwargs)

        return inner

    return wrap
