#!/usr/bin/env bash
# Build what cluster workers need to install: newswatch itself (a wheel) and the
# project's German NER model as an installable spaCy package. Output: dist/.
# Pass both to Beam with --extra_package (see deploy/README.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
out=${1:-$root/dist}
mkdir -p "$out"
"$py" -m pip wheel --no-deps -q -w "$out" "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m spacy package "$root/models/de_newswatch_ner" "$tmp" --force >/dev/null
cp "$tmp"/*/dist/*.tar.gz "$out"/
echo "built:"; ls -1 "$out"
