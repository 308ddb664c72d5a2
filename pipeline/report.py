"""Human-readable output for the command line (JSON output lives next to each command)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import click


def _entity_lines(entities: list[dict]) -> list[str]:
    """Group mentions by canonical id (or key) and show each once with its surface forms."""
    groups: "OrderedDict[str, dict]" = OrderedDict()
    for e in entities:
        k = e.get("canonical_id") or e.get("key") or f"{e.get('label')}:{e.get('text')}"
        g = groups.setdefault(k, {"e": e, "forms": OrderedDict(), "n": 0})
        g["forms"][e.get("text")] = None
        g["n"] += 1
    linked, unlinked = [], []
    for k, g in groups.items():
        e = g["e"]
        forms = ", ".join(f"«{f}»" for f in g["forms"])
        count = f" ×{g['n']}" if g["n"] > 1 else ""
        if e.get("canonical_id"):
            linked.append(f"{e.get('canonical_name') or e.get('text')} [{e.get('label')} {e['canonical_id']}] {forms}{count}")
        else:
            unlinked.append(f"{e.get('text')} [{e.get('label')}]{count}")
    return linked + ([f"other: {'; '.join(unlinked)}"] if unlinked else [])


def print_article(a: dict, alerts: list[dict]) -> None:
    lang = a.get("language") or "und"
    click.secho(f"\n[{lang}] {a.get('title') or '(no title)'}", bold=True)
    where = a.get("url") or a.get("origin") or ""
    click.echo(f"  source: {a.get('source')}  {where}")
    click.echo(f"  id: {a.get('id')}  published: {a.get('published') or '-'}")
    lines = _entity_lines(a.get("entities") or [])
    click.echo("  entities:" + ("" if lines else " none"))
    for line in lines:
        click.echo(f"    - {line}")
    click.echo(f"  topics: {', '.join(a.get('topics') or []) or 'none'}")
    if alerts:
        click.echo("  alerts:")
        for al in alerts:
            _print_alert_body(al, indent="    ")
    else:
        click.echo("  alerts: none")


def _print_alert_body(al: dict, indent: str) -> None:
    seen, matches = set(), []
    for m in al.get("matches") or []:
        key = (m.get("text"), m.get("term"))
        if key not in seen:
            seen.add(key)
            matches.append(m)
    shown = "; ".join(
        f"«{m.get('text')}»" + (f" ({m.get('kind')} {m.get('term')})" if m.get("term") and m.get("term") != m.get("text") else "")
        for m in matches[:6]
    )
    more = f" (+{len(matches) - 6} more)" if len(matches) > 6 else ""
    click.secho(f"{indent}! {al.get('rule_id')} — {al.get('rule_name')} [{al.get('severity')}]", fg="yellow")
    click.echo(f"{indent}  matched: {shown}{more}")
    click.echo(f"{indent}  snippet: {al.get('snippet')}")


def print_run_report(report, *, show_articles: bool = True) -> None:
    by_article: dict[str, list[dict]] = {}
    for al in report.alerts:
        by_article.setdefault(al["article_id"], []).append(al)
    if show_articles:
        for a in sorted(report.articles, key=lambda a: (a.get("published") or "", a.get("title") or "")):
            print_article(a, sorted(by_article.get(a["id"], []), key=lambda x: x["rule_id"]))
    s = report.summary
    click.secho("\nSummary", bold=True)
    click.echo(
        f"  read {s['read']}, articles {s['articles']}, stored new {s['stored_new']}, updated {s['stored_updated']}, "
        f"unchanged {s['unchanged']}, deduplicated {s['deduplicated']}, dead-lettered {s['dead_lettered']}, "
        f"alerts {s['alerts']} ({s['alerts_new']} new)"
    )
    if s["languages"]:
        click.echo("  languages: " + ", ".join(f"{k} {v}" for k, v in sorted(s["languages"].items())))
    if s["dead_letter_reasons"]:
        click.echo("  dead letters: " + ", ".join(f"{k} {v}" for k, v in sorted(s["dead_letter_reasons"].items())))
    for w in report.warnings:
        click.secho(f"  warning: {w}", fg="yellow")
    click.echo(f"  took {report.elapsed_s:.1f} s")
    click.secho("Results", bold=True)
    click.echo(f"  store:        {report.store_path}")
    click.echo(f"  run report:   {report.run_dir}")
    click.echo(f"  dead letters: {report.dead_letter_path}  (newswatch deadletters)")
    click.echo("  next: newswatch search '\"New START\"' | newswatch alerts list")
    if report.failed:
        click.secho(f"  run FAILED: {report.error}", fg="red", err=True)


def print_search_result(result) -> None:
    click.echo(f"{result.total} article(s)" + (f", showing {len(result.hits)}" if result.total > len(result.hits) else ""))
    for h in result.hits:
        click.secho(f"\n[{h.language or 'und'}] {h.title}", bold=True)
        click.echo(f"  {h.published or '-'}  {h.source}  {h.url or ''}  id={h.article_id}")
        for sn in h.snippets:
            click.echo(f"  {sn.field}: {sn.text}")
        linked = [f"{e.name} ({e.canonical_id})" for e in h.entities if e.canonical_id]
        if linked:
            click.echo("  entities: " + ", ".join(linked))
        if h.topics:
            click.echo("  topics: " + ", ".join(h.topics))


def print_alerts(found: Iterable) -> None:
    found = list(found)
    click.echo(f"{len(found)} alert(s)")
    for al in found:
        d = al.to_dict() if hasattr(al, "to_dict") else al
        click.echo(f"\n{d.get('fired_at')}  [{d.get('language') or 'und'}] {d.get('title')}")
        _print_alert_body(d, indent="  ")


def print_dead_letters(letters: Iterable) -> None:
    letters = list(letters)
    click.echo(f"{len(letters)} dead letter(s)")
    for d in letters:
        click.echo(f"\n{d.at}  stage={d.stage} reason={d.reason}  origin={d.origin or '-'}")
        click.echo(f"  {d.detail}")
        preview = d.payload[:160].replace("\n", " ")
        click.echo(f"  payload: {preview}{'…' if len(d.payload) > 160 else ''}")
