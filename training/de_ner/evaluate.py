#!/usr/bin/env python
"""Entity-level evaluation of a spaCy NER pipeline on held-out German data.

Usage:
    python training/de_ner/evaluate.py MODEL_DIR HELDOUT [--min-f1 0.60]

HELDOUT is a GermEval 2014 tsv file (e.g. training/de_ner/heldout-sample.tsv
or /work/shared/ner-data/germeval2014/NER-de-dev.tsv) or a .spacy DocBin
written by convert.py. GermEval tags are mapped exactly as for training
(PER/LOC/ORG kept, OTH -> MISC, *deriv/*part -> O).

The text of every sentence is re-tokenised by the pipeline, as in production,
and predicted entities count as correct only if character offsets and label
match a gold entity exactly. Prints JSON with overall and per-label
precision/recall/F1 and speed; with --min-f1, exits with status 1 if the
overall F1 is below the threshold (CI quality gate).

Importable: ``evaluate(model_path, heldout_path) -> dict``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]


def _convert_module():
    """Import the sibling convert.py whether this file is run as a script,
    imported as part of a package, or loaded from its path."""
    try:
        from . import convert  # type: ignore[no-redef]
        return convert
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location(
        "_newswatch_de_ner_convert", Path(__file__).resolve().parent / "convert.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


Gold = List[Tuple[str, List[Tuple[int, int, str]]]]  # (text, [(start, end, label)])


def load_heldout(path: PathLike, vocab=None, part_deriv: str = "drop") -> Gold:
    """Read a held-out file into (text, gold entity char spans) pairs."""
    import spacy
    from spacy.tokens import DocBin

    path = Path(path)
    if vocab is None:
        vocab = spacy.blank("de").vocab
    if path.suffix == ".spacy":
        docs = list(DocBin().from_disk(path).get_docs(vocab))
    else:
        conv = _convert_module()
        docs = [conv.make_doc(vocab, w, t) for w, t in conv.read_germeval(path, part_deriv)]
    return [(d.text, [(e.start_char, e.end_char, e.label_) for e in d.ents]) for d in docs]


def _prf(tp: int, fp: int, fn: int) -> Dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"p": round(p, 4), "r": round(r, 4), "f": round(f, 4),
            "tp": tp, "fp": fp, "fn": fn, "support": tp + fn}


def score(gold: Sequence[set], pred: Sequence[set]) -> dict:
    labels = sorted({s[2] for g in gold for s in g} | {s[2] for p in pred for s in p})
    counts = {lab: [0, 0, 0] for lab in labels}
    for g, p in zip(gold, pred):
        for s in p:
            counts[s[2]][0 if s in g else 1] += 1
        for s in g - p:
            counts[s[2]][2] += 1
    per_label = {lab: _prf(*c) for lab, c in counts.items()}
    tot = [sum(c[i] for c in counts.values()) for i in range(3)]
    return {"overall": _prf(*tot), "per_label": per_label}


def evaluate(model_path: PathLike, heldout_path: PathLike, *, limit: Optional[int] = None,
             batch_size: int = 256, nlp=None) -> dict:
    """Evaluate the pipeline in ``model_path`` on ``heldout_path``.

    Returns a dict with ``overall`` and ``per_label`` P/R/F1 (exact span
    match), the number of sentences/words and the speed in words/s."""
    import spacy

    if nlp is None:
        nlp = spacy.load(model_path)
    data = load_heldout(heldout_path, nlp.vocab)
    if limit:
        data = data[:limit]
    texts = [t for t, _ in data]
    gold = [set(spans) for _, spans in data]
    t0 = time.perf_counter()
    docs = list(nlp.pipe(texts, batch_size=batch_size))
    seconds = time.perf_counter() - t0
    pred = [{(e.start_char, e.end_char, e.label_) for e in d.ents} for d in docs]
    n_words = sum(len(d) for d in docs)
    result = score(gold, pred)
    result.update({
        "model": str(model_path),
        "heldout": str(heldout_path),
        "sentences": len(texts),
        "words": n_words,
        "seconds": round(seconds, 2),
        "words_per_second": int(n_words / seconds) if seconds else None,
    })
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Entity P/R/F1 of a spaCy NER model on held-out data")
    ap.add_argument("model", help="pipeline directory or installed package name")
    ap.add_argument("heldout", help="GermEval tsv or .spacy file")
    ap.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    ap.add_argument("--min-f1", type=float, default=None,
                    help="exit with status 1 if the overall F1 is below this")
    args = ap.parse_args(argv)
    res = evaluate(args.model, args.heldout, limit=args.limit)
    print(json.dumps(res, indent=2, sort_keys=True))
    if args.min_f1 is not None and res["overall"]["f"] < args.min_f1:
        print(f"FAIL: overall F1 {res['overall']['f']:.4f} < {args.min_f1}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
