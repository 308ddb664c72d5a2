"""End to end through the command line, on the seeds and on bad input, with a temporary store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "seeds"
SEED = SEEDS / "000_f1290934ed803041.txt"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSWATCH_STORE__PATH", str(tmp_path / "store" / "nw.db"))
    monkeypatch.setenv("NEWSWATCH_STORE__DEAD_LETTER_PATH", str(tmp_path / "store" / "dead.jsonl"))
    monkeypatch.delenv("NEWSWATCH_CONFIG", raising=False)
    return tmp_path


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), obj={}, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """One run over seeds/ shared by the read-only tests below (NER off to stay fast)."""
    tmp = tmp_path_factory.mktemp("seeded")
    mp = pytest.MonkeyPatch()
    mp.setenv("NEWSWATCH_STORE__PATH", str(tmp / "nw.db"))
    mp.setenv("NEWSWATCH_STORE__DEAD_LETTER_PATH", str(tmp / "dead.jsonl"))
    mp.delenv("NEWSWATCH_CONFIG", raising=False)
    result = invoke("-q", "run", "--no-ner", "--json")
    assert result.exit_code == 0, result.output
    yield json.loads(result.stdout)
    mp.undo()


def test_run_over_seeds_reports_article_entities_topics_alerts(seeded):
    s = seeded["summary"]
    assert s["read"] == 1 and s["articles"] == 1 and s["stored_new"] == 1 and s["dead_lettered"] == 0
    (article,) = seeded["articles"]
    assert article["language"] == "de"
    assert article["title"] == "Medien: Russland und USA führen Gespräche in Ankara"
    ids = {e.get("canonical_id") for e in article["entities"]}
    assert {"Q320225", "Q4161286", "Q52649", "Q4247698", "Q4773806", "concept:new-start"} <= ids
    assert "arms-control" in article["topics"]
    fired = {a["rule_id"] for a in seeded["alerts"]}
    assert {"new-start", "naryshkin", "peskov", "lavrov"} <= fired
    for alert in seeded["alerts"]:
        assert alert["article_id"] == article["id"] and alert["snippet"] and alert["matches"]


def test_human_output_names_everything(env):
    result = invoke("-q", "run", "--no-ner", str(SEED))
    assert result.exit_code == 0, result.output
    out = result.output
    for needle in ("[de] Medien: Russland und USA", "Sergei Naryshkin [PER Q320225]", "topics:", "! new-start", "Summary", "store:"):
        assert needle in out


def test_search_phrase_entity_and_alerts(seeded):
    result = invoke("search", '"New START"')
    assert result.exit_code == 0 and "«New START»" in result.output
    result = invoke("search", "--entity", "Q320225", "--json")
    data = json.loads(result.stdout)
    assert data["total"] == 1 and data["hits"][0]["language"] == "de"
    assert invoke("search", "marathon").exit_code == 1
    assert invoke("search", "--lang", "en", "Ankara").exit_code == 1
    result = invoke("alerts", "list", "--json")
    assert result.exit_code == 0
    assert {"new-start", "naryshkin"} <= {a["rule_id"] for a in json.loads(result.stdout)}
    result = invoke("alerts", "list", "--rule", "naryshkin", "--json")
    assert {a["rule_id"] for a in json.loads(result.stdout)} == {"naryshkin"}


def test_bad_query_is_a_usage_error(seeded):
    result = invoke("search", '"unclosed')
    assert result.exit_code == 2 and "position" in result.output


def test_second_run_adds_nothing(env):
    first = json.loads(invoke("-q", "run", "--no-ner", "--json", str(SEED)).stdout)["summary"]
    second = json.loads(invoke("-q", "run", "--no-ner", "--json", str(SEED)).stdout)["summary"]
    assert first["stored_new"] == 1 and first["alerts_new"] >= 4
    assert second["stored_new"] == 0 and second["unchanged"] == 1 and second["alerts_new"] == 0


def test_bad_input_is_dead_lettered_and_good_input_flows(env):
    folder = env / "in"
    folder.mkdir()
    shutil.copy(SEED, folder / "good.txt")
    (folder / "empty.txt").write_text("")
    (folder / "broken.jsonl").write_text('{"title": "Ok", "body": "Lawrow traf Fidan in Ankara zu langen Gesprächen."}\n{not json\n')
    # Polish in ISO-8859-2 without a declared charset: no safe guess, so it is kept, not garbled.
    (folder / "polish.txt").write_bytes("Tytuł\n\nZażółć gęślą jaźń, łódź płynie po Wiśle.".encode("iso-8859-2"))
    (folder / "huge.txt").write_text("Titel\n\n" + "x" * 3_000_000)
    feed = env / "broken-feed.xml"
    feed.write_text("<html><body>Not a feed at all, just a page that moved.</body></html>")
    result = invoke("-q", "run", "--no-ner", "--json", str(folder), str(feed))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    reasons = report["summary"]["dead_letter_reasons"]
    assert report["summary"]["articles"] == 2, report["summary"]
    assert any(k.endswith(":empty") for k in reasons)
    assert any(k.endswith(":bad_json") for k in reasons)
    assert any(k.endswith(":too_large") for k in reasons)
    assert any(k.endswith(":bad_encoding") for k in reasons)
    assert any(k.startswith("feeds") for k in reasons), reasons
    for d in report["dead_letters"]:
        assert d["reason"] and d["detail"] and d["payload"] is not None
    listed = invoke("deadletters", "--json")
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == report["summary"]["dead_lettered"]
    strict = invoke("-q", "run", "--no-ner", "--strict", "--summary-only", str(folder))
    assert strict.exit_code == 1


def test_invalid_rule_file_stops_before_anything_runs(env, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: naryshkin\n    name: N\n    entiti: Q320225\n")
    cfg = tmp_path / "nw.yaml"
    cfg.write_text(f"resources:\n  rules: {rules}\n")
    result = invoke("-c", str(cfg), "run", "--no-ner", str(SEED))
    assert result.exit_code == 2
    assert "naryshkin" in result.output and "entiti" in result.output and "entity" in result.output
    assert not (env / "store" / "nw.db").exists()
    check = invoke("alerts", "check", str(rules))
    assert check.exit_code == 2


def test_alerts_test_on_text(env, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a new start for the city marathon")
    assert invoke("alerts", "test", str(f)).exit_code == 1
    f.write_text("Russia suspended its participation in the New START treaty, Sergei Lavrov said.")
    result = invoke("alerts", "test", "--json", str(f))
    assert result.exit_code == 0
    assert {"new-start", "lavrov"} <= {a["rule_id"] for a in json.loads(result.stdout)}


def test_config_commands(env):
    result = invoke("config", "check", "--offline", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0, data
    names = {c["name"] for c in data["checks"]}
    assert {"settings", "watchlist+concepts", "topics", "alert rules", "kafka", "index"} <= names
    assert "NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS" in invoke("config", "env").output
    assert invoke("config", "show").exit_code == 0


def test_help_teaches():
    out = invoke("--help").output
    assert "newswatch run" in out and "search" in out and "NEWSWATCH_" in out
    out = invoke("search", "--help").output
    assert '"New START"' in out and "--entity" in out and "Exit codes" in out


def test_search_without_store_says_what_to_do(env):
    result = invoke("search", "x")
    assert result.exit_code == 3 and "newswatch run" in result.output
