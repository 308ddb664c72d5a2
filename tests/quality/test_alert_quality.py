"""Quality gate for alerts: precision and recall per seed rule on labelled multilingual examples.

Entities come from the real watchlist/concept linker, exactly as in the
pipeline (linking runs before alerts), so the gate measures linking and rule
matching together. Examples live in tests/quality/data/alerts.yaml.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from core.records import Article
from transforms.alerts import load_engine

pytestmark = pytest.mark.quality

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "seeds"
DATA = Path(__file__).resolve().parent / "data" / "alerts.yaml"

# Floors per rule (rules with at least MIN_SUPPORT positive examples) and overall.
MIN_SUPPORT = 3
RULE_PRECISION = 0.9
RULE_RECALL = 0.8
MICRO_PRECISION = 0.95
MICRO_RECALL = 0.9


def _examples() -> list[dict]:
    return yaml.safe_load(DATA.read_text(encoding="utf-8"))["examples"]


def _article(ex: dict) -> Article:
    if "file" in ex:
        text = (ROOT / ex["file"]).read_text(encoding="utf-8")
        title, _, body = text.partition("\n\n")
    else:
        title, body = ex.get("title", ""), ex["text"]
    return Article(
        id=ex["id"], url=None, canonical_url=None, source="quality", title=title.strip(), body=body.strip(),
        published=None, fetched="2022-11-10T00:00:00+00:00", content_hash=ex["id"], language=ex["language"],
    )


@pytest.fixture(scope="module")
def fired() -> dict[str, dict]:
    from transforms.entities import link_article
    from transforms.watchlist import EntityLinker

    linker = EntityLinker.from_files(SEEDS / "watchlist.yaml", SEEDS / "concepts.yaml")
    engine = load_engine(SEEDS / "alert-rules.yaml", watchlist=SEEDS / "watchlist.yaml", concepts=SEEDS / "concepts.yaml")
    out = {}
    for ex in _examples():
        article = link_article(linker, _article(ex))
        out[ex["id"]] = {alert.rule_id: alert for alert in engine.match(article)}
    return out


def test_the_data_set_is_broad_enough():
    examples = _examples()
    assert len(examples) >= 40
    assert {ex["language"] for ex in examples} >= {"de", "en", "ru", "uk", "pl", "fr"}
    assert len({ex["id"] for ex in examples}) == len(examples)
    assert sum(1 for ex in examples if not ex["expect"]) >= 10  # hard negatives


def test_precision_and_recall_per_rule(fired):
    tp, fp, fn = Counter(), Counter(), Counter()
    errors = []
    for ex in _examples():
        expected, got = set(ex["expect"]), set(fired[ex["id"]])
        for rule in got & expected:
            tp[rule] += 1
        for rule in got - expected:
            fp[rule] += 1
            errors.append(f"  false alarm  {rule:<18} {ex['id']}")
        for rule in expected - got:
            fn[rule] += 1
            errors.append(f"  missed       {rule:<18} {ex['id']}")
    rows, failures = [], []
    for rule in sorted(set(tp) | set(fp) | set(fn)):
        p = tp[rule] / (tp[rule] + fp[rule]) if tp[rule] + fp[rule] else 1.0
        r = tp[rule] / (tp[rule] + fn[rule]) if tp[rule] + fn[rule] else 1.0
        rows.append(f"  {rule:<18} P={p:.2f} R={r:.2f} (tp={tp[rule]} fp={fp[rule]} fn={fn[rule]})")
        if tp[rule] + fn[rule] >= MIN_SUPPORT and (p < RULE_PRECISION or r < RULE_RECALL):
            failures.append(rule)
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    micro_p = total_tp / (total_tp + total_fp)
    micro_r = total_tp / (total_tp + total_fn)
    report = "\n".join(rows + [f"  micro P={micro_p:.2f} R={micro_r:.2f}"] + errors)
    print("\nalert quality\n" + report)
    assert not failures, f"rules below the floor: {failures}\n{report}"
    assert micro_p >= MICRO_PRECISION and micro_r >= MICRO_RECALL, report


def test_seed_article_fires_new_start_and_naryshkin(fired):
    alerts = fired["seed-de"]
    assert {"new-start", "naryshkin"} <= set(alerts)
    found = {m.text for m in alerts["new-start"].matches}
    assert {"SNV-III", "New START", "Vertrag über die Begrenzung strategischer Waffen"} <= found
    assert any(m.text == "Sergej Naryschkin" for m in alerts["naryshkin"].matches)


def test_a_new_start_for_the_marathon_fires_nothing(fired):
    assert fired["marathon-en"] == {}
    assert fired["marathon-shouted-en"] == {}


def test_snv_iii_in_russian_fires_new_start(fired):
    assert "new-start" in fired["snv-ru"]
    assert any("СНВ-III" in m.text for m in fired["snv-ru"]["new-start"].matches)
