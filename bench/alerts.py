"""Alert matching cost: the shipped rules, and the shipped rules plus 10,000 keyword rules, against no rules."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import yaml

from bench.corpus import synthetic_articles
from bench.timing import interleaved, print_table, ratio_table


def _keyword_rules(n: int, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzäöüабвгдежзиклмнопрстуфх"
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(6, 12))))
    return [{"id": f"kw{i}", "name": f"keyword {w}", "phrase": w} for i, w in enumerate(sorted(words))]


def bench_alerts(n_articles: int = 60, repeats: int = 5) -> list[dict]:
    from core.settings import load_settings
    from transforms.alerts import load_engine
    from transforms.entities import link_article
    from transforms.watchlist import EntityLinker

    s = load_settings().resources
    linker = EntityLinker.from_settings(load_settings())
    articles = [link_article(linker, a) for a in synthetic_articles(n_articles)]
    shipped = yaml.safe_load(Path(s.rules).read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.yaml"
        big.write_text(yaml.safe_dump({"rules": shipped["rules"] + _keyword_rules(10_000)}, allow_unicode=True), encoding="utf-8")
        one = Path(tmp) / "one.yaml"
        one.write_text(yaml.safe_dump({"rules": [{"id": "noop", "name": "never", "phrase": "zzqqxxyyzz"}]}), encoding="utf-8")
        engines = {
            "1 rule (baseline)": load_engine(one),
            "shipped rules": load_engine(s.rules, watchlist=s.watchlist, concepts=s.concepts),
            "shipped + 10,000 keyword rules": load_engine(big, watchlist=s.watchlist, concepts=s.concepts),
        }
    cases = {k: (lambda e=e: [e.match(a) for a in articles]) for k, e in engines.items()}
    samples = interleaved(cases, items=n_articles, repeats=repeats)
    rows = ratio_table(samples, "1 rule (baseline)")
    for r in rows:
        r["ms_per_article"] = round(1000 / r["items_per_s"], 3)
    print_table(f"alert matching, {n_articles} ~5 KB articles, median of {repeats}", rows)
    return rows
