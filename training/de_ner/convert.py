#!/usr/bin/env python
"""Convert the open German NER corpora into spaCy DocBin files.

Sources (see /work/shared/ner-data/README.md and training/de_ner/README.md):

* GermEval 2014 (CC BY 4.0), tsv: ``index  token  outer-tag  nested-tag``,
  ``#\\t<url>\\t[date]`` comment line before every sentence.
  Only the *outer* column is used.
    PER/LOC/ORG   -> PER/LOC/ORG
    OTH           -> MISC
    *deriv, *part -> O  (default, ``--part-deriv drop``; see README for why;
                          ``--part-deriv keep`` maps them to the base label)
* LER, German legal documents (CC BY 4.0), ``token tag``:
    PER, RR (judge), AN (lawyer)                 -> PER
    LD (country), ST (city), STR (street), LDS   -> LOC
    ORG, UN (company), INN (institution), GRT    -> ORG
    MRK (brand)                                  -> MISC
    GS, VO, EUN, VS, VT (laws, ordinances, EU norms,
      regulations, contracts)                    -> O   (GermEval leaves law
                                                         names untagged, e.g.
                                                         "Grundgesetz", "GG")
    RS (court decisions), LIT (legal literature) -> missing (unknown): these
      citations embed court and author names that GermEval would tag, so the
      tokens are neither positive nor negative examples.
  Only a deterministic sample of LER sentences is used (``--ler-sentences``).
* Europeana Newspapers (CC0), ``token IOB-tag`` (PER/LOC/ORG), historical
  OCR text without sentence breaks: comment lines are skipped, trailing
  punctuation glued to words is split off, IOB1 ``I-`` starts are repaired and
  the token stream is cut into pseudo-sentences.

Fixed split (never changes with the options):
  heldout.spacy  all 2,200 sentences of NER-de-dev.tsv   -> never trained on
  dev.spacy      500 sentences of NER-de-test-part.tsv (seeded sample)
                 -> early stopping / model selection only
  train_<name>.spacy  remaining 3,580 test-part sentences (+ optional extras)

Everything is deterministic: inputs are read in sorted order and every
random choice uses ``random.Random(seed)``.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

DATA_DIR = Path("/work/shared/ner-data")
GERMEVAL_DEV = "germeval2014/NER-de-dev.tsv"
GERMEVAL_TEST = "germeval2014/NER-de-test-part.tsv"
LABELS = ("LOC", "MISC", "ORG", "PER")
DEV_SIZE = 500
SPLIT_SEED = 0

# A sentence: parallel lists of tokens and tags. A tag is "B-X", "I-X", "O"
# or None (missing / unknown annotation).
Sentence = Tuple[List[str], List[Optional[str]]]

LER_MAP = {
    "PER": "PER", "RR": "PER", "AN": "PER",
    "LD": "LOC", "ST": "LOC", "STR": "LOC", "LDS": "LOC",
    "ORG": "ORG", "UN": "ORG", "INN": "ORG", "GRT": "ORG",
    "MRK": "MISC",
    "GS": "O", "VO": "O", "EUN": "O", "VS": "O", "VT": "O",
    "RS": None, "LIT": None,
}


# --------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------
def read_germeval_raw(path: Path) -> List[List[str]]:
    """Return the sentences of a GermEval tsv file as lists of raw lines
    (comment line included, no trailing blank line)."""
    sents: List[List[str]] = []
    cur: List[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                if cur:
                    sents.append(cur)
                cur = []
                continue
            cur.append(line)
    if cur:
        sents.append(cur)
    return sents


def map_germeval_tag(tag: str, part_deriv: str = "drop") -> str:
    """Map one outer GermEval tag to B-/I-{PER,LOC,ORG,MISC} or O."""
    if tag == "O":
        return "O"
    prefix, label = tag.split("-", 1)
    for suffix in ("deriv", "part"):
        if label.endswith(suffix):
            if part_deriv == "drop":
                return "O"
            label = label[: -len(suffix)]
    if label == "OTH":
        label = "MISC"
    if label not in LABELS:
        raise ValueError(f"unexpected GermEval tag {tag!r}")
    return f"{prefix}-{label}"


def germeval_lines_to_sentence(lines: Sequence[str], part_deriv: str = "drop") -> Sentence:
    words: List[str] = []
    tags: List[Optional[str]] = []
    for line in lines:
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 3:
            raise ValueError(f"bad GermEval line: {line!r}")
        words.append(cols[1])
        tags.append(map_germeval_tag(cols[2], part_deriv))
    return words, repair_iob(tags)


def read_germeval(path: Path, part_deriv: str = "drop") -> List[Sentence]:
    return [germeval_lines_to_sentence(s, part_deriv) for s in read_germeval_raw(path)]


def read_ler(path: Path) -> List[Sentence]:
    sents: List[Sentence] = []
    words: List[str] = []
    tags: List[Optional[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    sents.append((words, repair_iob(tags)))
                words, tags = [], []
                continue
            tok, tag = line.rsplit(" ", 1)
            words.append(tok)
            if tag == "O":
                tags.append("O")
            else:
                prefix, fine = tag.split("-", 1)
                coarse = LER_MAP[fine]
                tags.append(None if coarse is None else ("O" if coarse == "O" else f"{prefix}-{coarse}"))
    if words:
        sents.append((words, repair_iob(tags)))
    return sents


_TRAIL = re.compile(r"^(.*?[^\W_])([.,;:!?)\]\"“”«»]+)$")
_LEAD = re.compile(r"^([(\[\"„“«»]+)([^\W_].*)$")
_SENT_END = {".", "!", "?"}


def read_europeana(path: Path, max_len: int = 50) -> List[Sentence]:
    toks: List[str] = []
    tags: List[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("# "):
                continue
            cols = line.split()
            if len(cols) != 2:  # OCR debris lines without a clean tag
                continue
            tok, tag = cols
            tag = tag.upper().replace("_", "-")
            if not re.fullmatch(r"[BI]-(PER|LOC|ORG)", tag):
                tag = "O"  # "O", stray MISC or OCR garbage in the tag column
            lead = _LEAD.match(tok)
            pre: List[str] = []
            if lead:
                pre, tok = list(lead.group(1)), lead.group(2)
            trail = _TRAIL.match(tok)
            post: List[str] = []
            if trail and len(tok) > 1:
                tok, post = trail.group(1), list(trail.group(2))
            for p in pre:
                toks.append(p)
                tags.append("O")
            toks.append(tok)
            tags.append(tag)
            for p in post:
                toks.append(p)
                tags.append("O")
    # cut into pseudo-sentences
    sents: List[Sentence] = []
    start = 0
    for i, tok in enumerate(toks):
        n = i + 1 - start
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        end = (tok in _SENT_END and n >= 5 and nxt[:1].isupper()
               and (i + 1 >= len(tags) or not tags[i + 1].startswith("I-")))
        if end or n >= max_len or i + 1 == len(toks):
            # never cut inside an entity: move the cut forward if needed
            if n >= max_len and i + 1 < len(toks) and tags[i + 1].startswith("I-"):
                continue
            sents.append((toks[start:i + 1], repair_iob(tags[start:i + 1])))
            start = i + 1
    return sents


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def repair_iob(tags: Sequence[Optional[str]]) -> List[Optional[str]]:
    """Turn IOB1-style or broken sequences into valid IOB2: an I-X that does
    not continue an X entity becomes B-X."""
    out: List[Optional[str]] = []
    prev: Optional[str] = "O"
    for t in tags:
        if t is not None and t.startswith("I-"):
            if prev is None or prev == "O" or prev[2:] != t[2:]:
                t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "%", "“", "'"}
_NO_SPACE_AFTER = {"(", "[", "„"}


def spaces_for(words: Sequence[str]) -> List[bool]:
    """Heuristic detokenisation so that the text looks like running text
    (spaCy re-tokenises it during training, as it will at run time)."""
    spaces = []
    for i, w in enumerate(words):
        if i + 1 == len(words):
            spaces.append(False)
            continue
        nxt = words[i + 1]
        spaces.append(not (w in _NO_SPACE_AFTER or nxt in _NO_SPACE_BEFORE))
    return spaces


def make_doc(vocab, words: Sequence[str], tags: Sequence[Optional[str]]):
    from spacy.tokens import Doc
    return Doc(vocab, words=list(words), spaces=spaces_for(words), ents=list(tags))


def to_docbin(vocab, sents: Iterable[Sentence]):
    from spacy.tokens import DocBin
    db = DocBin(store_user_data=False)
    for words, tags in sents:
        db.add(make_doc(vocab, words, tags))
    return db


def has_entity(sent: Sentence) -> bool:
    return any(t is not None and t.startswith("B-") for t in sent[1])


def count_entities(sents: Iterable[Sentence]) -> dict:
    c: dict = {}
    for _, tags in sents:
        for t in tags:
            if t is not None and t.startswith("B-"):
                c[t[2:]] = c.get(t[2:], 0) + 1
    return dict(sorted(c.items()))


def sample_extra(sents: List[Sentence], n: int, seed: int, min_entity_share: float = 0.8,
                 max_tokens: int = 80) -> List[Sentence]:
    """Deterministic sample of n sentences, mostly ones with entities."""
    if n <= 0:
        return []
    sents = [s for s in sents if 3 <= len(s[0]) <= max_tokens]
    rng = random.Random(seed)
    with_ent = [s for s in sents if has_entity(s)]
    without = [s for s in sents if not has_entity(s)]
    rng.shuffle(with_ent)
    rng.shuffle(without)
    n_ent = min(len(with_ent), int(round(n * min_entity_share)))
    picked = with_ent[:n_ent] + without[: max(0, n - n_ent)]
    rng.shuffle(picked)
    return picked


def germeval_split(data_dir: Path, part_deriv: str = "drop", dev_size: int = DEV_SIZE,
                   seed: int = SPLIT_SEED):
    """The fixed split. Returns (heldout, dev, train) sentence lists."""
    heldout = read_germeval(data_dir / GERMEVAL_DEV, part_deriv)
    test = read_germeval(data_dir / GERMEVAL_TEST, part_deriv)
    idx = list(range(len(test)))
    dev_idx = set(random.Random(seed).sample(idx, dev_size))
    dev = [test[i] for i in idx if i in dev_idx]
    train = [test[i] for i in idx if i not in dev_idx]
    return heldout, dev, train


def write_heldout_sample(data_dir: Path, out: Path, n: int = 500) -> None:
    """First n sentences of NER-de-dev.tsv, verbatim GermEval format."""
    raw = read_germeval_raw(data_dir / GERMEVAL_DEV)[:n]
    with open(out, "w", encoding="utf-8") as f:
        for lines in raw:
            f.write("\n".join(lines) + "\n\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--out", type=Path, required=True, help="corpus output directory")
    ap.add_argument("--name", default="germeval", help="name of the train variant")
    ap.add_argument("--part-deriv", choices=["drop", "keep"], default="drop")
    ap.add_argument("--germeval-copies", type=int, default=1,
                    help="how often the GermEval train sentences are repeated in the mix")
    ap.add_argument("--ler-sentences", type=int, default=0)
    ap.add_argument("--europeana-sentences", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="seed for sampling LER/Europeana")
    ap.add_argument("--write-sample", type=Path, default=None,
                    help="also write the first 500 held-out sentences (GermEval tsv) here")
    args = ap.parse_args(argv)

    import spacy
    vocab = spacy.blank("de").vocab
    args.out.mkdir(parents=True, exist_ok=True)
    heldout, dev, train = germeval_split(args.data_dir, args.part_deriv)
    stats = {"germeval_train": {"sentences": len(train), "entities": count_entities(train)},
             "dev": {"sentences": len(dev), "entities": count_entities(dev)},
             "heldout": {"sentences": len(heldout), "entities": count_entities(heldout)}}
    mix: List[Sentence] = list(train) * max(1, args.germeval_copies)

    if args.ler_sentences:
        ler: List[Sentence] = []
        for p in sorted((args.data_dir / "ler").glob("*.conll")):
            ler.extend(read_ler(p))
        ler_s = sample_extra(ler, args.ler_sentences, args.seed)
        stats["ler"] = {"available": len(ler), "sentences": len(ler_s),
                        "entities": count_entities(ler_s)}
        mix.extend(ler_s)
    if args.europeana_sentences:
        eu: List[Sentence] = []
        for p in sorted((args.data_dir / "europeana").glob("*.bio")):
            eu.extend(read_europeana(p))
        eu_s = sample_extra(eu, args.europeana_sentences, args.seed + 1, max_tokens=60)
        stats["europeana"] = {"available": len(eu), "sentences": len(eu_s),
                              "entities": count_entities(eu_s)}
        mix.extend(eu_s)
    random.Random(args.seed).shuffle(mix)
    stats["train_total"] = {"sentences": len(mix), "tokens": sum(len(s[0]) for s in mix)}

    suffix = "" if args.part_deriv == "drop" else "_keep"
    to_docbin(vocab, heldout).to_disk(args.out / f"heldout{suffix}.spacy")
    to_docbin(vocab, dev).to_disk(args.out / f"dev{suffix}.spacy")
    to_docbin(vocab, mix).to_disk(args.out / f"train_{args.name}.spacy")
    with open(args.out / f"train_{args.name}.stats.json", "w") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    print(json.dumps(stats, indent=2, sort_keys=True))
    if args.write_sample:
        write_heldout_sample(args.data_dir, args.write_sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
