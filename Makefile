# newswatch: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

PRISM  := .cache/prism/prism
BEAM_VERSION := 2.75.0

.PHONY: install demo test unit prism services-start services-stop bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[models,dev]"
	@touch $(STAMP)

## install: create .venv and install newswatch with its models and test tools
install: $(STAMP)

## demo: run the pipeline over seeds/ on the embedded default (SQLite), no servers needed
demo: install
	$(BIN)/newswatch run

## prism: build Beam's Prism runner (local streaming) from the Go module proxy into .cache/
prism: $(PRISM)

$(PRISM):
	@command -v go >/dev/null || { echo "error: Go is needed to build the Prism runner (https://go.dev/dl)"; exit 1; }
	GOBIN=$(abspath $(dir $(PRISM))) GOFLAGS=-mod=mod go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION)

## test: start the real Kafka and OpenSearch (deploy/local), run every test, stop them
test: install $(PRISM)
	deploy/local/services.sh start all
	NEWSWATCH_REQUIRE_SERVICES=1 $(BIN)/python -m pytest; rc=$$?; deploy/local/services.sh stop all; exit $$rc

## unit: the fast tests only, no servers
unit: install
	$(BIN)/python -m pytest -m "not integration"

services-start:
	deploy/local/services.sh start all

services-stop:
	deploy/local/services.sh stop all

## bench: benchmarks (speed and memory), see bench/README.md
bench: install
	$(BIN)/python -m bench

clean:
	rm -rf newswatch-data .pytest_cache
