#!/usr/bin/env bash
# Reproducible build of models/de_newswatch_ner:
#   convert -> train -> evaluate on held-out -> package (meta.json, small strings).
#
# Usage (from anywhere):  training/de_ner/train.sh
# Environment:
#   PYTHON    python with spaCy 3.8   (default: <repo>/.venv/bin/python)
#   NER_DATA  the ner-data directory  (default: /work/shared/ner-data)
#   MODEL_OUT output model directory  (default: <repo>/models/de_newswatch_ner)
#   VERSION   model version           (default: 0.1.0)
# Training takes about 4-5 minutes on one free CPU core (spaCy trains single-threaded).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
NER_DATA="${NER_DATA:-/work/shared/ner-data}"
MODEL_OUT="${MODEL_OUT:-$ROOT/models/de_newswatch_ner}"
VERSION="${VERSION:-0.1.0}"
cd "$HERE"
mkdir -p corpus output

echo "== 1/4 convert"
# GermEval train part x3 + 4,000 LER sentences + 3,000 Europeana sentences (seed 0);
# fixed split: heldout = all of NER-de-dev.tsv, dev = 500 test-part sentences.
"$PYTHON" convert.py --data-dir "$NER_DATA" --out corpus --name final \
    --germeval-copies 3 --ler-sentences 4000 --europeana-sentences 3000 --seed 0 > output/convert-final.log
# the committed CI sample: first 500 sentences of the held-out file
"$PYTHON" -c "import sys; sys.path.insert(0, '.'); import convert; from pathlib import Path; \
convert.write_heldout_sample(Path('$NER_DATA'), Path('heldout-sample.tsv'))"

echo "== 2/4 train"
rm -rf output/final
start=$(date +%s)
"$PYTHON" -m spacy train config.cfg --output output/final \
    --paths.train corpus/train_final.spacy --paths.dev corpus/dev.spacy 2>&1 | tee output/train-final.log
end=$(date +%s)
echo "training took $((end - start)) s"

echo "== 3/4 + 4/4 evaluate on held-out and package"
"$PYTHON" package.py --model output/final/model-best --out "$MODEL_OUT" \
    --heldout corpus/heldout.spacy --sample heldout-sample.tsv \
    --stats corpus/train_final.stats.json --sources germeval,ler,europeana \
    --version "$VERSION" --train-seconds $((end - start))

"$PYTHON" - "$MODEL_OUT" <<'EOF'
import sys, spacy
nlp = spacy.load(sys.argv[1])
doc = nlp("Der Leiter des russischen Auslandsgeheimdienstes, Sergej Naryschkin, "
          "traf in Ankara Vertreter der NATO.")
print([(e.text, e.label_) for e in doc.ents])
EOF
du -sh "$MODEL_OUT"
