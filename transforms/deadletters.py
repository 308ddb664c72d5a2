"""Dead-letter plumbing shared by every stage.

A stage's plain function raises :class:`core.errors.RecordError` for a bad
record. :class:`RecordFn` turns that into a ``DeadLetter`` on the ``dead``
output, and :func:`apply_stage` adds Beam's ``with_exception_handling`` so
that an unexpected exception also becomes a dead letter instead of failing
the pipeline. Good records keep flowing either way.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.errors import RecordError
from core.telemetry import count_stage
from core.records import DeadLetter

DEAD = "dead"


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def payload_text(element: Any) -> str:
    """The element as text for the dead letter, never losing information."""
    if isinstance(element, bytes):
        try:
            return element.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return "base64:" + base64.b64encode(element).decode("ascii")
    if hasattr(element, "to_json"):
        return element.to_json()
    if isinstance(element, str):
        return element
    try:
        return json.dumps(element, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(element)


def origin_of(element: Any) -> str | None:
    for attr in ("origin", "url", "id"):
        value = getattr(element, attr, None)
        if value:
            return str(value)
    return None


def dead_letter(stage: str, element: Any, exc: BaseException) -> DeadLetter:
    reason = getattr(exc, "code", None) if isinstance(exc, RecordError) else f"unexpected:{type(exc).__name__}"
    return DeadLetter(
        stage=stage,
        reason=reason or "bad_record",
        detail=str(exc),
        payload=payload_text(element),
        origin=origin_of(element),
        at=utcnow(),
        error_class=type(exc).__name__,
    )


def from_exception_tuple(stage: str):
    """Map Beam's ``(element, (type, repr, traceback))`` dead-letter tuple to a DeadLetter."""

    def convert(bad) -> DeadLetter:
        element, (exc_type, exc_repr, tb) = bad
        return DeadLetter(
            stage=stage,
            reason=f"unexpected:{getattr(exc_type, '__name__', str(exc_type))}",
            detail=f"{exc_repr}\n{''.join(tb[-3:]) if tb else ''}".strip(),
            payload=payload_text(element),
            origin=origin_of(element),
            at=utcnow(),
            error_class=getattr(exc_type, "__name__", str(exc_type)),
        )

    return convert


class RecordFn(beam.DoFn):
    """Run ``fn(element) -> iterable of outputs`` with RecordError going to the dead output.

    ``make_fn`` is called once per DoFn instance in ``setup()`` so that models
    and automata load once, not per element.
    """

    def __init__(self, stage: str, make_fn: Callable[[], Callable[[Any], Iterable[Any]]]):
        self._stage = stage
        self._make_fn = make_fn
        self._fn = None
        self._ok = Metrics.counter("newswatch", f"{stage}.ok")
        self._bad = Metrics.counter("newswatch", f"{stage}.dead")

    def setup(self):
        self._fn = self._make_fn()

    def process(self, element):
        try:
            outputs = list(self._fn(element))
        except RecordError as exc:
            self._bad.inc()
            count_stage(self._stage, "dead")
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(self._stage, element, exc))
            return
        self._ok.inc()
        count_stage(self._stage, "ok")
        yield from outputs


def apply_stage(pcoll, label: str, stage: str, make_fn) -> tuple[beam.PCollection, beam.PCollection]:
    """Apply a record function with full dead-letter handling; returns (good, dead).

    Expected failures (RecordError) carry their own reason code; anything
    unexpected is caught by Beam's ``with_exception_handling`` and becomes an
    ``unexpected:<Exception>`` dead letter, so the stream keeps flowing.
    """
    res = pcoll | label >> beam.ParDo(RecordFn(stage, make_fn)).with_exception_handling(
        main_tag="ok", dead_letter_tag="failed"
    )
    failed = res["failed"] | f"{label}.failed" >> beam.Map(from_exception_tuple(stage))
    dead = (res[DEAD], failed) | f"{label}.dead" >> beam.Flatten()
    return res["ok"], dead
