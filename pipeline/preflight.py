"""Validate everything before anything runs: settings, resource files, models, servers.

``newswatch config check`` prints every check; ``newswatch run`` calls
:func:`preflight_for_run`, which raises on the first invalid resource so a
bad rule file stops the run before a single article is read.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import NewswatchError
from core.records import Article, RawArticle
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    status: str  # ok | warning | error | off
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_alert_engine(settings: Settings, rules_file: str | None = None):
    from transforms.alerts import load_engine

    r = settings.resources
    return load_engine(rules_file or r.rules, watchlist=r.watchlist, concepts=r.concepts)


def _check(name: str, fn) -> Check:
    try:
        detail = fn()
        return Check(name, "ok", detail)
    except NewswatchError as exc:
        return Check(name, "error", str(exc))
    except (OSError, ValueError) as exc:
        return Check(name, "error", f"{type(exc).__name__}: {exc}")


def resource_checks(settings: Settings) -> list[Check]:
    from transforms.topics import load_topics
    from transforms.watchlist import load_resources

    r = settings.resources

    def watchlist():
        entries = load_resources(r.watchlist, r.concepts)
        people = sum(1 for e in entries if e.source == "watchlist")
        return f"{people} watchlist entries ({r.watchlist}), {len(entries) - people} concepts ({r.concepts})"

    def topics():
        tagger = load_topics(r.topics, watchlist=r.watchlist, concepts=r.concepts)
        return f"{len(tagger.topics)} topics ({r.topics})"

    def rules():
        engine = load_alert_engine(settings)
        return f"{len(engine.rules)} rules, {len(engine.enabled_rules)} enabled ({r.rules})"

    return [_check("watchlist+concepts", watchlist), _check("topics", topics), _check("alert rules", rules)]


def model_checks(settings: Settings) -> list[Check]:
    from transforms.ner import model_status

    out = []
    for lang, status in model_status(settings).items():
        level = "warning" if "MISSING" in status else ("off" if "watchlist matching only" in status else "ok")
        out.append(Check(f"ner[{lang}]", level, status))
    return out


def _tcp(hostport: str, timeout: float = 3.0) -> None:
    host, _, port = hostport.strip().rpartition(":")
    with socket.create_connection((host or "localhost", int(port)), timeout=timeout):
        pass


def server_checks(settings: Settings, connect: bool) -> list[Check]:
    out = []
    if not settings.kafka.enabled:
        out.append(Check("kafka", "off", "not configured: `run` reads files and feeds directly (embedded mode)"))
    elif not connect:
        out.append(Check("kafka", "off", f"{settings.kafka.bootstrap_servers} (not contacted: --offline)"))
    else:
        def kafka():
            for hp in settings.kafka.bootstrap_servers.split(","):
                _tcp(hp)
            return f"{settings.kafka.bootstrap_servers} reachable; topics {settings.kafka.articles_topic}, {settings.kafka.alerts_topic}, {settings.kafka.dead_letter_topic}"

        out.append(_check("kafka", kafka))
    if not settings.index.enabled:
        out.append(Check("index", "off", f"not configured: embedded SQLite store at {settings.store.path}"))
    elif not connect:
        out.append(Check("index", "off", f"{settings.index.backend} {settings.index.hosts} (not contacted: --offline)"))
    else:
        def index():
            from connectors.search_index import open_index

            st = open_index(settings.index)
            try:
                return f"{settings.index.backend} {', '.join(settings.index.hosts)}: {st.describe() if hasattr(st, 'describe') else 'reachable'}"
            finally:
                st.close()

        out.append(_check("index", index))
    return out


def run_checks(settings: Settings, *, connect: bool = True) -> list[Check]:
    checks = [Check("settings", "ok", "valid (YAML + environment + defaults)")]
    store_dir = Path(settings.store.path).parent
    checks.append(Check("store", "ok", f"SQLite at {settings.store.path}" + ("" if store_dir.exists() else " (folder created on first run)")))
    checks += resource_checks(settings)
    checks += model_checks(settings)
    checks += server_checks(settings, connect)
    return checks


def preflight_for_run(settings: Settings, *, ner: bool = True) -> list[str]:
    """Raise on invalid resources; return warnings (e.g. missing NER models)."""
    for check in resource_checks(settings):
        if check.status == "error":
            from core.errors import ResourceError

            raise ResourceError(check.detail)
    warnings = []
    if ner and settings.ner.enabled:
        for check in model_checks(settings):
            if check.status == "warning":
                warnings.append(f"{check.name} {check.detail}")
    return warnings


def try_rules_on_text(settings: Settings, text: str, *, language: str | None = None, rules_file: str | None = None):
    """Run language detection, linking and the rules on one text, outside Beam."""
    from transforms.entities import link_article
    from transforms.language import LanguageDetector
    from transforms.parse import to_article
    from transforms.watchlist import EntityLinker

    lines = text.strip().split("\n", 2)
    title, body = (lines[0], lines[2]) if len(lines) == 3 and not lines[1].strip() else ("", text)
    article: Article = to_article(RawArticle(source="alerts-test", title=title, body=body, language=language), settings.input)
    article = LanguageDetector.from_settings(settings).detect_article(article)
    article = link_article(EntityLinker.from_settings(settings), article)
    return load_alert_engine(settings, rules_file).match(article)
