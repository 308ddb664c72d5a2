"""Timing helpers: repeat, take medians, compare with a baseline from the same run."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Sample:
    name: str
    seconds: list[float]
    items: int
    extra: dict = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def items_per_s(self) -> float:
        return self.items / self.median_s if self.median_s else float("inf")

    def p95_s(self) -> float:
        xs = sorted(self.seconds)
        return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "items": self.items,
            "repeats": len(self.seconds),
            "median_s": round(self.median_s, 6),
            "min_s": round(min(self.seconds), 6),
            "max_s": round(max(self.seconds), 6),
            "items_per_s": round(self.items_per_s, 2),
            **self.extra,
        }


def measure(name: str, fn: Callable[[], object], *, items: int, repeats: int = 5, warmup: int = 1) -> Sample:
    """Run ``fn`` warmup + repeats times; each timing is one whole call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Sample(name, times, items)


def interleaved(cases: dict[str, Callable[[], object]], *, items: int, repeats: int = 5, warmup: int = 1) -> dict[str, Sample]:
    """Measure several cases round-robin so that machine noise hits them alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: Sample(k, v, items) for k, v in times.items()}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ratio_table(samples: dict[str, Sample], baseline: str) -> list[dict]:
    base = samples[baseline].median_s
    rows = []
    for name, s in samples.items():
        d = s.to_dict()
        d["vs_" + baseline] = round(s.median_s / base, 3) if base else None
        rows.append(d)
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n== {title}")
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))
