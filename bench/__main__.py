"""Run benchmarks: ``python -m bench [entities|alerts|streaming|all] [--quick]``.

Every figure is a median over repeats, and each table compares against a
baseline measured in the same run (the machines are noisy: quote ratios).
Results are also written as JSON to bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="*", default=["all"], help="entities, alerts, streaming or all")
    ap.add_argument("--quick", action="store_true", help="fewer articles and repeats (a smoke run)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    which = set(args.which)
    if "all" in which:
        which = {"entities", "alerts", "streaming"}
    results = {"when": datetime.now(timezone.utc).isoformat(), "python": platform.python_version(), "machine": platform.machine()}
    if "entities" in which:
        from bench import entities

        results["watchlist"] = entities.bench_watchlist(*((12, 2) if args.quick else ()))
        results["entity_stage"] = entities.bench_ner(*((8, 1) if args.quick else ()))
    if "alerts" in which:
        from bench import alerts

        results["alerts"] = alerts.bench_alerts(*((12, 2) if args.quick else ()))
    if "streaming" in which:
        from bench import streaming

        results["streaming"] = streaming.run(quick=args.quick)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{'-'.join(sorted(which))}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
