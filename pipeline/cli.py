"""The ``newswatch`` command line: run the pipeline, search, alerts and configuration.

Exit codes are stable so scripts can trust them:

* 0 — success (``search``: at least one hit)
* 1 — ``search`` found nothing, or ``run --strict`` dead-lettered records
* 2 — bad usage, configuration, rule file or query (nothing ran)
* 3 — a run failed (a server down after retries, a pipeline error)
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from core.errors import NewswatchError
from core.settings import ConfigError, Settings, env_var_docs, load_settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_EMPTY, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def _setup_logging(verbose: int, quiet: bool, *, long_running: bool = False) -> None:
    """Short commands log warnings only; long ones (run, ingest) also progress at INFO."""
    if quiet:
        level = logging.WARNING
    elif verbose > 1:
        level = logging.DEBUG
    elif verbose or long_running:
        level = logging.INFO
    else:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("pipeline", "connectors", "transforms", "core"):
        logging.getLogger(name).setLevel(level)
    # Beam and the search clients are chatty (every request, expected 400s on
    # concurrent index creation); keep their errors only unless asked.
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose > 1 else logging.WARNING)
    for noisy in ("opensearch", "elastic_transport", "elasticsearch", "kafka"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 2 else logging.ERROR)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _settings(ctx: click.Context, **overrides) -> Settings:
    try:
        return load_settings(ctx.obj.get("config"), **overrides)
    except ConfigError as exc:
        _fail(str(exc))


def _emit_json(data) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _env_help() -> str:
    return "\n".join(f"  {env}" for env, _, _ in env_var_docs())


class _Cli(click.Group):
    """Turns newswatch errors into a message and a stable exit code, for every subcommand."""

    def invoke(self, ctx):
        from core.errors import ResourceError
        from core.query import QueryError

        try:
            return super().invoke(ctx)
        except (ResourceError, QueryError, ConfigError) as exc:
            _fail(str(exc), EXIT_USAGE)
        except NewswatchError as exc:
            _fail(str(exc), EXIT_FAILED)


@click.group(
    cls=_Cli,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Configuration: newswatch reads --config FILE (or $NEWSWATCH_CONFIG) and then environment "
    "variables NEWSWATCH_<SECTION>__<FIELD>; see `newswatch config env` for the full list and "
    "`newswatch config check` to validate everything before a run.",
)
@click.option("-c", "--config", type=click.Path(dir_okay=False), envvar="NEWSWATCH_CONFIG", help="YAML settings file.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: int, quiet: bool) -> None:
    """newswatch — monitor news across languages for people, treaties and topics.

    \b
    Typical session:
      newswatch run                       # process seeds/ into the local store
      newswatch run ./articles https://example.org/feed.xml
      newswatch search '"New START" AND Ankara'
      newswatch search --entity Q320225   # everything naming Sergei Naryshkin
      newswatch alerts list
      newswatch config check
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["log"] = (verbose, quiet)
    _setup_logging(verbose, quiet, long_running=ctx.invoked_subcommand in ("run", "ingest"))


def main() -> None:
    cli(obj={})


# --- run ---------------------------------------------------------------------

_FEED_SUFFIXES = (".xml", ".rss", ".atom", ".rdf")


def _split_inputs(inputs: tuple[str, ...], feeds: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """URLs and feed-like files are feeds; everything else is a file or folder of articles."""
    paths, feed_list = [], list(feeds)
    for item in inputs:
        low = item.lower()
        if low.startswith(("http://", "https://", "file://")) or low.endswith(_FEED_SUFFIXES):
            feed_list.append(item)
        elif not Path(item).exists():
            _fail(f"input not found: {item}")
        else:
            paths.append(item)
    return paths, feed_list


@cli.command(
    epilog="Exit codes: 0 done, 1 --strict and some records were dead-lettered, 2 bad config or "
    "rules (nothing ran), 3 the pipeline failed. Bad records never stop a run: they go to the "
    "dead-letter table and file with their reason (see `newswatch deadletters`)."
)
@click.argument("inputs", nargs=-1)
@click.option("--feed", "feeds", multiple=True, metavar="URL", help="An RSS/Atom feed URL or file (repeatable).")
@click.option("--store", type=click.Path(dir_okay=False), help="SQLite store path (default: store.path).")
@click.option("--no-ner", is_flag=True, help="Skip statistical NER (watchlist and concept linking still run).")
@click.option("--runner", help="Beam runner (default runner.runner, DirectRunner).")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON on stdout.")
@click.option("--strict", is_flag=True, help="Exit 1 when any record was dead-lettered.")
@click.option("--summary-only", is_flag=True, help="Print only the summary, not each article.")
@click.option("--stream/--batch", "stream", default=None,
              help="Consume the Kafka articles topic (default when kafka.bootstrap_servers is set and no INPUTS are given), or read INPUTS directly.")
@click.option("--until-end", is_flag=True, help="With --stream: process what the topic holds now, then stop (a replay).")
@click.option("--from", "start", type=click.Choice(["committed", "earliest", "latest"]), default="committed", show_default=True,
              help="With --stream: where a consumer group without committed offsets starts.")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port (default metrics.port).")
@click.option("-o", "--option", "beam_options", multiple=True, metavar="--NAME=VALUE",
              help="Extra Beam pipeline option, e.g. -o --flink_master=localhost:8081 (repeatable).")
@click.pass_context
def run(ctx, inputs, feeds, store, no_ner, runner, as_json, strict, summary_only, stream, until_end, start, metrics_port, beam_options):
    """Run the pipeline over files, folders and feeds into the store.

    \b
    INPUTS are files or folders (.txt, .json, .jsonl, .html) and feed URLs or
    feed files (.xml, .rss, .atom). Without INPUTS, input.paths and
    input.feeds from the configuration are used; by default that is seeds/.

    \b
    For each article it prints the language, title and source, the entities
    (with canonical ids where the watchlist knows them), the topics and the
    alerts that fired; then a summary and where the results are.
    A second run over the same input stores nothing new.

    \b
    Streaming (kafka.bootstrap_servers set): consumes the articles topic
    until Ctrl-C, writing articles to the index (or the SQLite store), alerts
    to the alerts topic and index, dead letters to their topic. Locally it
    runs on Beam's Prism runner (`make prism`); on a cluster pass
    --runner FlinkRunner or DataflowRunner and -o options (see deploy/README.md).
    """
    from pipeline.runs import execute_batch

    overrides = {}
    if store:
        overrides["store"] = {"path": str(Path(store).resolve())}
    if runner:
        overrides["runner"] = {"runner": runner}
    if metrics_port is not None:
        overrides["metrics"] = {"port": metrics_port}
    settings = _settings(ctx, **overrides)
    if stream is None:
        stream = settings.kafka.enabled and not inputs and not feeds
    if stream:
        if not settings.kafka.enabled:
            _fail("--stream needs kafka.bootstrap_servers (NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS)")
        if inputs or feeds:
            _fail("--stream reads the Kafka topic; publish files and feeds with `newswatch ingest`")
        from pipeline.runs import execute_streaming

        outcome = execute_streaming(settings, ner=not no_ner, start=start, bounded=until_end, extra_options=list(beam_options))
        if as_json:
            _emit_json(outcome)
        else:
            c = outcome["counters"]
            alerts_fired = sum(v for k, v in c.items() if k.startswith("alerts.fired."))
            click.echo(f"stream stopped after {outcome['elapsed_s']} s: {alerts_fired} alerts fired")
            # Front stages run in both branches, so their counters count each record twice.
            click.echo("counters (newswatch namespace; parse/language/link/topics cover both branches):")
            for name in sorted(c):
                click.echo(f"  {name}={c[name]}")
        return
    if inputs or feeds:
        paths, feed_list = _split_inputs(inputs, feeds)
    else:
        paths, feed_list = [str(p) for p in settings.input.paths], list(settings.input.feeds)
    if not paths and not feed_list:
        _fail("nothing to read: give files, folders or feeds, or set input.paths / input.feeds")
    if settings.metrics.port is not None:
        from core import telemetry

        telemetry.serve(settings.metrics.port)
    report = execute_batch(settings, paths=paths, feeds=feed_list, ner=not no_ner, extra_options=list(beam_options))
    if as_json:
        _emit_json(report.to_dict())
    else:
        from pipeline.report import print_run_report

        print_run_report(report, show_articles=not summary_only)
    if report.failed:
        sys.exit(EXIT_FAILED)
    if strict and report.summary.get("dead_lettered", 0):
        sys.exit(EXIT_EMPTY)


# --- search ------------------------------------------------------------------


@cli.command(
    epilog="Exit codes: 0 hits found, 1 no hits, 2 bad query or configuration, 3 store unavailable."
)
@click.argument("query", required=False, default="")
@click.option("-e", "--entity", "entities", multiple=True, metavar="ID|NAME", help="Only articles naming this entity: a canonical id (Q320225) or a name in any spelling (Naryshkin, Нарышкин). Repeatable: all must occur.")
@click.option("-l", "--lang", "languages", multiple=True, metavar="CODE", help="Only these languages (repeatable: any).")
@click.option("-t", "--topic", "topics", multiple=True, help="Only these topics (repeatable: any).")
@click.option("-s", "--source", "sources", multiple=True, help="Only these sources (repeatable: any).")
@click.option("--since", help="Published at or after (2024-05-01, 2024-05-01T10:00Z, 7d, 12h).")
@click.option("--until", help="Published at or before.")
@click.option("-n", "--limit", default=20, show_default=True, type=int)
@click.option("--offset", default=0, type=int)
@click.option("--sort", type=click.Choice(["relevance", "date"]), default="relevance", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def search(ctx, query, entities, languages, topics, sources, since, until, limit, offset, sort, as_json):
    """Search stored articles.

    \b
    QUERY syntax:
      peskov lavrov              both words (implicit AND)
      "New START" OR SNV         a phrase, or a word
      ankara NOT sport           exclude (also: ankara -sport)
      (peskov OR lavrov) talks   grouping
      verhandl*                  prefix
      title:naryshkin            only in the title
    Filters (--entity, --lang, --topic, --source, --since, --until) narrow
    the result; a query may consist of filters only.

    \b
    Examples:
      newswatch search '"New START"'
      newswatch search --entity Q320225 --lang de
      newswatch search --entity Нарышкин --entity "New START"
      newswatch search 'Ankara AND (Gespräche OR talks)' --since 30d --json
    """
    from core.query import QueryError, QuerySyntaxError, SearchQuery
    from pipeline.report import print_search_result
    from pipeline.stores import open_store

    from pipeline.lookup import resolve_entity

    settings = _settings(ctx)
    entity_ids = [resolve_entity(settings, e) for e in entities]
    try:
        q = SearchQuery(
            text=query, entities=entity_ids, languages=list(languages), topics=list(topics),
            sources=list(sources), since=since, until=until, limit=limit, offset=offset, sort=sort,
        )
    except QuerySyntaxError as exc:
        _fail(f"{exc}\n{exc.pointer()}")
    except QueryError as exc:
        _fail(str(exc))
    with open_store(settings, must_exist=True) as st:
        result = st.search(q)
    if as_json:
        _emit_json(result.to_dict())
    else:
        print_search_result(result)
    sys.exit(EXIT_OK if result.total else EXIT_EMPTY)


# --- alerts ------------------------------------------------------------------


@cli.group()
def alerts():
    """Alerts that fired, and the rules that fire them."""


@alerts.command("list", epilog="Exit codes: 0 alerts listed, 1 none, 2 bad arguments, 3 store unavailable.")
@click.option("-r", "--rule", "rule_id", help="Only this rule id.")
@click.option("--since", help="Fired at or after (2024-05-01, 7d, 12h).")
@click.option("-n", "--limit", default=50, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def alerts_list(ctx, rule_id, since, limit, as_json):
    """List fired alerts, newest first, with the matched text and a snippet."""
    from core.query import QueryError, parse_time
    from pipeline.report import print_alerts
    from pipeline.stores import open_store

    settings = _settings(ctx)
    try:
        since_dt = parse_time(since) if since else None
    except QueryError as exc:
        _fail(str(exc))
    with open_store(settings, must_exist=True) as st:
        found = st.list_alerts(rule_id=rule_id, since=since_dt.isoformat() if since_dt else None, limit=limit)
    if as_json:
        _emit_json([a.to_dict() for a in found])
    else:
        print_alerts(found)
    sys.exit(EXIT_OK if found else EXIT_EMPTY)


@alerts.command("check", epilog="Exit codes: 0 valid, 2 invalid (the message names the rule and the field).")
@click.argument("rules_file", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def alerts_check(ctx, rules_file, as_json):
    """Validate an alert rule file (default: resources.rules) without running anything."""
    from pipeline.preflight import load_alert_engine

    settings = _settings(ctx)
    engine = load_alert_engine(settings, rules_file)
    rules = [{"id": r.id, "name": r.name} for r in engine.rules]
    if as_json:
        _emit_json({"ok": True, "rules": rules})
    else:
        click.echo(f"{len(rules)} rules OK in {rules_file or settings.resources.rules}")
        for r in rules:
            click.echo(f"  {r['id']}: {r['name']}")


@alerts.command("test", epilog="Exit codes: 0 some rule fired, 1 none fired, 2 invalid rules or input.")
@click.argument("text_file", type=click.File("r", encoding="utf-8"))
@click.option("--lang", help="Language of the text (default: detected).")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), help="Rule file (default: resources.rules).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def alerts_test(ctx, text_file, lang, rules_file, as_json):
    """Try the rules on one text (a file, or - for stdin) and show what fires and why."""
    from pipeline.preflight import try_rules_on_text
    from pipeline.report import print_alerts

    settings = _settings(ctx)
    fired = try_rules_on_text(settings, text_file.read(), language=lang, rules_file=rules_file)
    if as_json:
        _emit_json([a.to_dict() for a in fired])
    else:
        print_alerts(fired) if fired else click.echo("no rule fired")
    sys.exit(EXIT_OK if fired else EXIT_EMPTY)


# --- ingest and feeds --------------------------------------------------------


@cli.command(epilog="Exit codes: 0 stopped cleanly, 2 bad configuration, 3 Kafka unavailable.")
@click.option("--feed", "feeds", multiple=True, metavar="URL", help="Feed to poll (repeatable; default input.feeds). Append ' interval_s=N' for its own interval.")
@click.option("--files", "paths", multiple=True, type=click.Path(exists=True), help="Also publish the articles in these files or folders (new or changed files only).")
@click.option("--once", is_flag=True, help="Poll every feed once, publish, and exit (for cron and tests).")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port (default metrics.port).")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the poll summary as JSON.")
@click.pass_context
def ingest(ctx, feeds, paths, once, metrics_port, as_json):
    """Poll feeds (and folders) and publish raw articles to Kafka.

    \b
    Polite by design: a per-feed interval (fetch.interval_s, or the feed's
    TTL), conditional GET with ETag/Last-Modified, Retry-After honoured,
    exponential backoff with jitter for failing feeds (never given up),
    per-host concurrency limits, timeouts and a size cap. Items already
    published are remembered in fetch.state_path, so a restart publishes
    only what is new. Ctrl-C stops after the polls in flight.

    \b
    Example:
      NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092 \\
        newswatch ingest --feed https://example.org/rss.xml --files ./inbox
    """
    from connectors.feed_poller import FeedPoller
    from connectors.kafka import ensure_topics

    overrides = {"metrics": {"port": metrics_port}} if metrics_port is not None else {}
    settings = _settings(ctx, **overrides)
    if not settings.kafka.enabled:
        _fail("ingest publishes to Kafka: set kafka.bootstrap_servers (NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS)")
    feed_list = list(feeds) if feeds else None
    if not (feed_list or settings.input.feeds or paths):
        _fail("nothing to ingest: give --feed or --files, or set input.feeds")
    ensure_topics(settings.kafka)
    if settings.metrics.port is not None:
        from core import telemetry

        telemetry.serve(settings.metrics.port)
    poller = FeedPoller(settings, feed_list, paths=list(paths) or None)
    try:
        if once:
            summary = poller.run_once(force=True)
            data = summary.to_dict() if hasattr(summary, "to_dict") else dict(vars(summary))
            if as_json:
                _emit_json(data)
            else:
                click.echo(" ".join(f"{k}={v}" for k, v in data.items()))
        else:
            poller.run()
    finally:
        poller.close()


@cli.group()
def feeds():
    """Feed health for `newswatch ingest`."""


@feeds.command("status", epilog="Exit codes: 0 all feeds healthy, 1 some feed is failing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def feeds_status_cmd(ctx, as_json):
    """Each feed's last success, consecutive errors, last error and next poll."""
    from connectors.feed_poller import feeds_status

    rows = feeds_status(_settings(ctx))
    if as_json:
        _emit_json(rows)
    else:
        if not rows:
            click.echo("no feeds configured or polled yet")
        for r in rows:
            health = "ok" if not r.get("consecutive_errors") else f"FAILING x{r['consecutive_errors']}"
            click.echo(f"{r['url']}\n  {health}  last success: {r.get('last_success') or 'never'}  "
                       f"last status: {r.get('last_status') or '-'}  next poll in: {r.get('next_poll_in_s')}s  "
                       f"items seen: {r.get('items_seen')}" + (f"\n  last error: {r['last_error']}" if r.get("last_error") else ""))
    sys.exit(EXIT_EMPTY if any(r.get("consecutive_errors") for r in rows) else EXIT_OK)


# --- entities ----------------------------------------------------------------


@cli.group()
def entities():
    """The watchlist and concepts: canonical ids and how names resolve."""


@entities.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def entities_list(ctx, as_json):
    """List watchlist entries and concepts with their canonical ids."""
    from pipeline.lookup import list_entries

    rows = list_entries(_settings(ctx))
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['id']:<24} {r['label']:<7} {r['name']}")


@entities.command("link", epilog="Exit codes: 0 something linked, 1 nothing linked.")
@click.argument("text")
@click.option("--lang", help="Language of the text (default: detected).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def entities_link(ctx, text, lang, as_json):
    """Show which watchlist entries and concepts a text names (no statistical NER).

    \b
    Example:
      newswatch entities link "Сергей Нарышкин встретился с Бернсом в Анкаре"
    """
    from transforms.language import LanguageDetector
    from transforms.watchlist import EntityLinker

    settings = _settings(ctx)
    language = lang or LanguageDetector.from_settings(settings).detect(text)[0]
    found = EntityLinker.from_settings(settings).link(text, language)
    if as_json:
        _emit_json({"language": language, "entities": [e.to_dict() for e in found]})
    else:
        click.echo(f"language: {language}")
        for e in found:
            click.echo(f"  «{e.text}» [{e.start}:{e.end}] → {e.canonical_id} {e.canonical_name} ({e.label}, {e.source})")
        if not found:
            click.echo("  nothing linked")
    sys.exit(EXIT_OK if found else EXIT_EMPTY)


# --- dead letters ------------------------------------------------------------


@cli.command("deadletters", epilog="Exit codes: 0 listed, 1 none, 3 store unavailable.")
@click.option("--stage", help="Only this stage (files.read, feeds.parse, parse, ...).")
@click.option("-n", "--limit", default=50, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, payloads included.")
@click.pass_context
def deadletters(ctx, stage, limit, as_json):
    """List dead-lettered records with their stage and reason."""
    from pipeline.report import print_dead_letters
    from pipeline.stores import open_sqlite

    settings = _settings(ctx)
    with open_sqlite(settings, must_exist=True) as st:
        letters = st.list_dead_letters(stage=stage, limit=limit)
    if as_json:
        _emit_json([d.to_dict() for d in letters])
    else:
        print_dead_letters(letters)
    sys.exit(EXIT_OK if letters else EXIT_EMPTY)


# --- config ------------------------------------------------------------------


@cli.group()
def config():
    """Show and validate the configuration."""


@config.command("check", epilog="Exit codes: 0 everything usable, 2 something is invalid or unreachable.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--offline", is_flag=True, help="Do not contact Kafka or the search server.")
@click.pass_context
def config_check(ctx, as_json, offline):
    """Validate settings, resource files, NLP models and configured servers.

    Like spaCy's `debug config`: every problem is reported with the file,
    entry and field, before anything runs. Missing NER models are warnings:
    the pipeline then runs on watchlist and concept matching for that language.
    """
    from pipeline.preflight import run_checks

    settings = _settings(ctx)
    checks = run_checks(settings, connect=not offline)
    bad = [c for c in checks if c.status == "error"]
    if as_json:
        _emit_json({"ok": not bad, "checks": [c.to_dict() for c in checks]})
    else:
        colours = {"ok": "green", "warning": "yellow", "error": "red", "off": None}
        for c in checks:
            click.echo(click.style(f"{c.status:>7}", fg=colours[c.status]) + f"  {c.name}: {c.detail}")
        click.echo(f"\n{'configuration OK' if not bad else f'{len(bad)} problem(s)'}")
    sys.exit(EXIT_USAGE if bad else EXIT_OK)


@config.command("show")
@click.pass_context
def config_show(ctx):
    """Print the effective settings (YAML + environment + defaults) as JSON; secrets masked."""
    from core.settings import describe_settings

    _emit_json(describe_settings(_settings(ctx)))


@config.command("env")
@click.option("--json", "as_json", is_flag=True)
def config_env(as_json):
    """List every environment variable newswatch reads, with its default.

    Lists and maps are given as JSON, e.g. NEWSWATCH_INDEX__HOSTS='["http://127.0.0.1:9200"]'.
    """
    if as_json:
        _emit_json([{"env": e, "default": d, "description": t} for e, d, t in env_var_docs()])
        return
    for env, default, desc in env_var_docs():
        click.echo(f"{env}\n    default: {default}" + (f"\n    {desc}" if desc else ""))
