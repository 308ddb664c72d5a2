import pytest

from core.settings import ConfigError, env_var_docs, load_settings


def test_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("NEWSWATCH_CONFIG", raising=False)
    s = load_settings()
    assert not s.kafka.enabled and not s.index.enabled
    assert s.store.path.name == "newswatch.db"


def test_yaml_then_env_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "nw.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: yaml:9092\nstore:\n  path: data/x.db\n")
    monkeypatch.setenv("NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    s = load_settings(cfg)
    assert s.kafka.bootstrap_servers == "env:9092"
    # Relative paths resolve against the config file's folder, not the cwd.
    assert s.store.path == (tmp_path / "data" / "x.db").resolve()


def test_unknown_key_is_an_error_naming_the_field(tmp_path):
    cfg = tmp_path / "nw.yaml"
    cfg.write_text("kafka:\n  bootstrap_server: x:1\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server"):
        load_settings(cfg)


def test_secret_in_file_is_refused(tmp_path):
    cfg = tmp_path / "nw.yaml"
    cfg.write_text("index:\n  password: hunter2\n")
    with pytest.raises(ConfigError, match="NEWSWATCH_INDEX__PASSWORD"):
        load_settings(cfg)


def test_secret_from_env_is_masked(monkeypatch):
    monkeypatch.setenv("NEWSWATCH_INDEX__PASSWORD", "hunter2")
    s = load_settings()
    assert s.index.password.get_secret_value() == "hunter2"
    assert "hunter2" not in str(s.model_dump(mode="json"))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_env_docs_cover_every_section():
    envs = {row[0] for row in env_var_docs()}
    assert "NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS" in envs
    assert "NEWSWATCH_INDEX__HOSTS" in envs
    assert "NEWSWATCH_NER__MODELS" in envs
