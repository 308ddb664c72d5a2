#!/usr/bin/env python
"""Copy a trained pipeline into models/de_newswatch_ner with a complete meta.json.

* keeps only tok2vec + ner,
* shrinks vocab/strings.json to the strings of a blank German pipeline plus
  the entity labels (the training vocabulary is not needed at run time: the
  hash embeddings hash token attributes directly) and checks that the
  predictions on the held-out set do not change,
* evaluates the packaged model on the full held-out set and on the committed
  sample and writes the scores, speed, training data and licences into
  meta.json (and a short README.md next to it).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import srsly

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from evaluate import evaluate  # noqa: E402

SOURCES = [
    {
        "name": "GermEval 2014 NER shared task data (NER-de-test-part.tsv; NER-de-dev.tsv held out)",
        "url": "https://sites.google.com/site/germeval2014ner/",
        "license": "CC BY 4.0",
        "author": "D. Benikova, C. Biemann, M. Reznicek: NoSta-D Named Entity Annotation "
                  "for German: Guidelines and Dataset. LREC 2014",
    },
    {
        "name": "LER - German legal documents NER dataset (sample, mapped to PER/LOC/ORG/MISC)",
        "url": "https://github.com/elenanereiss/Legal-Entity-Recognition",
        "license": "CC BY 4.0",
        "author": "E. Leitner, G. Rehm, J. Moreno-Schneider: Fine-grained Named Entity "
                  "Recognition in Legal Documents. SEMANTiCS 2019",
    },
    {
        "name": "Europeana Newspapers NER corpora, German (lft, onb, sbb)",
        "url": "https://github.com/EuropeanaNewspapers/ner-corpora",
        "license": "CC0 1.0",
        "author": "Europeana Newspapers project; C. Neudecker: An Open Corpus for Named "
                  "Entity Recognition in Historic Newspapers. LREC 2016",
    },
]


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="trained model-best directory")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heldout", type=Path, required=True, help="full held-out set (.spacy or tsv)")
    ap.add_argument("--sample", type=Path, required=True, help="committed held-out sample (tsv)")
    ap.add_argument("--stats", type=Path, required=True, help="train_*.stats.json from convert.py")
    ap.add_argument("--sources", default="germeval,ler,europeana",
                    help="comma-separated training sources used (germeval, ler, europeana)")
    ap.add_argument("--version", default="0.1.0")
    ap.add_argument("--train-seconds", type=int, default=None)
    args = ap.parse_args()

    import spacy

    nlp = spacy.load(args.model)
    assert nlp.pipe_names == ["tok2vec", "ner"], nlp.pipe_names
    labels = sorted(nlp.get_pipe("ner").labels)
    before = evaluate(args.model, args.heldout, nlp=nlp)

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    nlp.meta.update({"lang": "de", "name": "newswatch_ner", "version": args.version})
    nlp.to_disk(args.out)

    # shrink strings.json: blank German strings + labels are all that is needed
    blank = spacy.blank("de")
    for lab in labels:
        blank.vocab.strings.add(lab)
    strings = sorted(set(blank.vocab.strings))
    srsly.write_json(args.out / "vocab" / "strings.json", strings)

    full = evaluate(args.out, args.heldout)
    if full["overall"] != before["overall"]:
        raise SystemExit("pruning the string store changed the predictions: %s vs %s"
                         % (full["overall"], before["overall"]))
    sample = evaluate(args.out, args.sample)

    used = set(args.sources.split(","))
    keys = {"germeval": "GermEval", "ler": "LER", "europeana": "Europeana"}
    sources = [s for s in SOURCES if any(keys[k] in s["name"] for k in used)]
    meta = srsly.read_json(args.out / "meta.json")
    meta.update({
        "lang": "de",
        "name": "newswatch_ner",
        "version": args.version,
        "description": "Compact German NER (tok2vec + ner, PER/LOC/ORG/MISC) for newswatch, "
                       "trained with training/de_ner/train.sh. Scores are exact-span entity "
                       "P/R/F1 on GermEval 2014 NER-de-dev.tsv (2,200 sentences, never "
                       "trained on), tags mapped OTH->MISC, *deriv/*part->O.",
        "author": "newswatch",
        "email": "",
        "url": "",
        "license": "CC BY 4.0 (trained on CC BY 4.0 and CC0 data; see sources)",
        "sources": sources,
        "performance": {
            "ents_f": full["overall"]["f"],
            "ents_p": full["overall"]["p"],
            "ents_r": full["overall"]["r"],
            "ents_per_type": {k: {"p": v["p"], "r": v["r"], "f": v["f"]}
                              for k, v in full["per_label"].items()},
        },
        "speed": {"cpu": full["words_per_second"]},
        "heldout_evaluation": {
            "full": {k: full[k] for k in ("heldout", "sentences", "words", "overall", "per_label",
                                          "words_per_second")},
            "sample": {k: sample[k] for k in ("sentences", "words", "overall", "per_label")}
                      | {"heldout": "training/de_ner/heldout-sample.tsv"},
        },
        "training": {
            "config": "training/de_ner/config.cfg",
            "script": "training/de_ner/train.sh",
            "data": srsly.read_json(args.stats),
            "seconds": args.train_seconds,
        },
    })
    meta["heldout_evaluation"]["full"]["heldout"] = "germeval2014/NER-de-dev.tsv"
    srsly.write_json(args.out / "meta.json", meta)

    readme = [
        "# de_newswatch_ner",
        "",
        f"Compact German spaCy {spacy.__version__.rsplit('.', 1)[0]} NER pipeline "
        "(tok2vec + ner; labels " + ", ".join(labels) + ") for newswatch. "
        "Built by `training/de_ner/train.sh`; see `training/de_ner/README.md`.",
        "",
        f"Held-out GermEval 2014 dev (2,200 sentences, never trained on): "
        f"P {full['overall']['p']:.3f} R {full['overall']['r']:.3f} F1 {full['overall']['f']:.3f}.",
        "",
        "## Training data and attribution",
        "",
    ]
    for s in sources:
        readme.append(f"- {s['name']}: {s['author']}. Licence: {s['license']}. {s['url']}")
    readme.append("")
    (args.out / "README.md").write_text("\n".join(readme), encoding="utf-8")

    size = dir_size(args.out)
    print(json.dumps({"out": str(args.out), "bytes": size,
                      "full": full["overall"], "full_per_label": full["per_label"],
                      "sample": sample["overall"], "words_per_second": full["words_per_second"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
