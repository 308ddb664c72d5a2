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
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from core.errors import NewswatchError
from core.settings import ConfigError, Settings, env_var_docs, load_settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_EMPTY, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("pipeline", "connectors", "transforms", "core"):
        logging.getLogger(name).setLevel(level)
    # Beam is chatty at INFO; keep its warnings only unless asked.
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose > 1 else logging.WARNING)


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


@click.group(
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
      newswatch search --entity Q315525   # everything naming Sergei Naryshkin
      newswatch alerts list
      newswatch config check
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    _setup_logging(verbose, quiet)


def main() -> None:
    try:
        cli(obj={})
    except NewswatchError as exc:
        _fail(str(exc))
