"""Quality gate: the project's German NER model on held-out GermEval sentences it never saw.

The held-out sample (training/de_ner/heldout-sample.tsv, the first 500
sentences of GermEval's dev split) is committed, so the gate runs without
../shared. The floor is the measured F1 (0.547) minus a small margin.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "de_newswatch_ner"
SAMPLE = ROOT / "training" / "de_ner" / "heldout-sample.tsv"
F1_FLOOR = 0.52


def _evaluate():
    spec = importlib.util.spec_from_file_location("de_ner_evaluate", ROOT / "training" / "de_ner" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.evaluate


@pytest.mark.quality
def test_german_ner_f1_on_held_out_sample():
    scores = _evaluate()(str(MODEL), str(SAMPLE))
    print(scores)
    overall = scores["overall"]
    assert overall["support"] > 400
    assert overall["f"] >= F1_FLOOR, f"German NER F1 {overall['f']:.3f} fell below {F1_FLOOR}"
    # Every label must still be learnt, not just the frequent ones.
    for label in ("PER", "LOC", "ORG", "MISC"):
        assert scores["per_label"][label]["f"] >= 0.35, (label, scores["per_label"][label])


@pytest.mark.quality
def test_pipeline_loads_the_german_model():
    from core.settings import load_settings
    from transforms.ner import NerTagger, model_status

    settings = load_settings()
    assert "installed" in model_status(settings)["de"]
    (spans,) = NerTagger(settings.ner).tag(["Bundeskanzler Olaf Scholz traf in Berlin Vertreter der NATO."], ["de"])
    labels = {(s.text, s.label) for s in spans}
    assert ("Berlin", "LOC") in labels
    assert any(label == "PER" and "Scholz" in text for text, label in labels)
