"""Progress output for long runs: a pass-through DoFn that logs counts and rate."""

from __future__ import annotations

import logging
import time

import apache_beam as beam

log = logging.getLogger(__name__)


class ReportProgress(beam.DoFn):
    """Logs ``stage=… done=N rate=…/s`` at most every ``every_s`` seconds per worker."""

    def __init__(self, stage: str, every_s: float = 2.0, total: int | None = None):
        self._stage = stage
        self._every_s = every_s
        self._total = total

    def setup(self):
        self._count = 0
        self._started = time.monotonic()
        self._last = self._started

    def process(self, element):
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            rate = self._count / max(now - self._started, 1e-9)
            of = f"/{self._total}" if self._total else ""
            log.info("progress stage=%s done=%d%s rate=%.1f/s", self._stage, self._count, of, rate)
        yield element

    def teardown(self):
        if getattr(self, "_count", 0):
            elapsed = time.monotonic() - self._started
            log.info("progress stage=%s done=%d elapsed_s=%.1f", self._stage, self._count, elapsed)
