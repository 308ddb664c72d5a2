import random
import textwrap

import pytest

from core.errors import ResourceError
from core.settings import SEEDS
from transforms.watchlist import Alias, EntityLinker, Entry, load_entries, load_resources

SEED_ARTICLE = next(SEEDS.glob("000_*.txt"))


@pytest.fixture(scope="module")
def linker():
    return EntityLinker.from_files(SEEDS / "watchlist.yaml", SEEDS / "concepts.yaml")


def ids(entities):
    return [e.canonical_id for e in entities]


def by_name(entities):
    return {e.text: e.canonical_name for e in entities}


def test_seed_resources_load():
    entries = load_resources(SEEDS / "watchlist.yaml", SEEDS / "concepts.yaml")
    names = {e.name for e in entries}
    assert {"Sergei Naryshkin", "Dmitry Peskov", "Sergei Lavrov", "Maria Zakharova", "Antony Blinken",
            "William J. Burns", "Recep Tayyip Erdoğan", "New START"} <= names
    assert next(e for e in entries if e.name == "Recep Tayyip Erdoğan").id == "Q39259"


def test_seed_article_links_the_people_and_the_treaty(linker):
    title, body = SEED_ARTICLE.read_text(encoding="utf-8").split("\n", 1)
    ents = linker.link_fields([("title", title), ("body", body)], "de")
    for e in ents:
        text = title if e.field == "title" else body
        assert text[e.start : e.end] == e.text
        assert e.key == e.canonical_id
    found = {(e.text, e.canonical_name) for e in ents}
    assert {
        ("Sergej Naryschkin", "Sergei Naryshkin"),
        ("Dmitri Peskow", "Dmitry Peskov"),
        ("Sergei Lawrow", "Sergei Lavrov"),
        ("Lawrow", "Sergei Lavrov"),
        ("Anthony Blinken", "Antony Blinken"),
        ("Maria Sacharowa", "Maria Zakharova"),
        ("SNV-III", "New START"),
        ("New START", "New START"),
        ("Vertrag über die Begrenzung strategischer Waffen", "New START"),
    } <= found
    treaty = [e for e in ents if e.canonical_id == "concept:new-start"]
    assert all(e.source == "concept" and e.label == "TREATY" for e in treaty)
    assert "Konstantin Jaroschenko" not in {e.text for e in ents}


def test_acronym_case_rules(linker):
    assert linker.link("The charity announced a new start for the city marathon.", "en") == []
    assert linker.link("A NEW START FOR THE CITY MARATHON", "en") == []
    assert ids(linker.link("Moscow suspended New START and START talks.", "en")) == ["concept:new-start", "concept:new-start"]
    assert ids(linker.link("DIE NATO WARNT", "de")) == ["Q7184"]
    assert linker.link("Der Start der Rakete wurde verschoben.", "de") == []


def test_inflected_and_transliterated_forms(linker):
    ru = linker.link("Директор СВР Сергей Нарышкин заявил... По словам Нарышкина, Нарышкиным довольны.", "ru")
    assert [e.text for e in ru if e.label == "PER"] == ["Сергей Нарышкин", "Нарышкина", "Нарышкиным"]
    pl = linker.link("Minister Siergiej Ławrow rozmawiał z Antonym Blinkenem. Ławrowowi zależy.", "pl")
    assert by_name(pl) == {"Siergiej Ławrow": "Sergei Lavrov", "Antonym Blinkenem": "Antony Blinken", "Ławrowowi": "Sergei Lavrov"}
    de = linker.link("Der SWR-Chef Naryschkin sagte, Naryschkins Behörde schweige.", "de")
    assert [e.text for e in de] == ["Naryschkin", "Naryschkins"]
    uk = linker.link("Речниця МЗС Марія Захарова заявила, що Захаровій погрожували.", "uk")
    assert {e.canonical_name for e in uk if e.label == "PER"} == {"Maria Zakharova"}


def test_surname_alone_needs_document_context(linker):
    assert linker.link("Naryschkin sagte am Montag nichts.", "de") == []
    # A role word anywhere in the document is context ...
    assert ids(linker.link("Naryschkin sagte, der Auslandsgeheimdienst sei bereit.", "de"))[:1] == ["Q320225"]
    # ... and so is the full name in another field.
    ents = linker.link_fields([("title", "Sergej Naryschkin in Ankara"), ("body", "Naryschkin sagte nichts.")], "de")
    assert [(e.field, e.text) for e in ents] == [("title", "Sergej Naryschkin"), ("body", "Naryschkin")]
    # Unambiguous surnames are marked surname_alone in the watchlist.
    assert ids(linker.link("Putin sagte nichts.", "de")) == ["Q7747"]


@pytest.mark.parametrize("text,lang,lookalike", [
    ("Anna Naryshkina-Smith denied any link to SVR chief Sergei Naryshkin.", "en", "Anna Naryshkina-Smith"),
    ("Elizaveta Peskova, the daughter of Kremlin spokesman Dmitry Peskov, lives in Paris.", "en", "Elizaveta Peskova"),
    ("Kremlin spokesman Dmitry Peskov has a daughter. Peskova posts photos.", "en", "Peskova"),
    ("Наталья Нарышкина, однофамилица директора СВР Сергея Нарышкина.", "ru", "Наталья Нарышкина"),
    ("Наталья Нарышкина, однофамилица директора СВР Сергея Нарышкина. Нарышкина рассказала о выставке.", "ru", "Нарышкина рассказала"),
    ("Елизавета Пескова, дочь Дмитрия Пескова, живёт в Париже.", "ru", "Елизавета Пескова"),
    ("Sergei Lavrovsky, a chess player, met the foreign minister.", "en", "Sergei Lavrovsky"),
    ("Traffic on Lavrov Street was blocked by the foreign minister's convoy.", "en", "Lavrov Street"),
    ("Актёр Андрей Лавров, тёзка главы МИД, сыграл роль.", "ru", "Андрей Лавров"),
    ("Футболист Алексей Захаров, не родственник представителя МИД, забил гол.", "ru", "Алексей Захаров"),
    ("Robert Burns never wrote about the CIA.", "en", "Robert Burns"),
    ("На улице Лаврова, где находится МИД, перекрыли движение.", "ru", "улице Лаврова"),
])
def test_lookalikes_do_not_link(linker, text, lang, lookalike):
    start = text.index(lookalike)
    end = start + len(lookalike)
    overlapping = [e for e in linker.link(text, lang) if e.label == "PER" and e.start < end and start < e.end]
    assert overlapping == []


def test_resolve_names_for_ner_spans(linker):
    assert linker.resolve("Sergej Naryschkin", "de").id == "Q320225"
    assert linker.resolve("Naryschkin", "de") is None
    assert linker.resolve("Naryschkin", "de", known_ids={"Q320225"}).id == "Q320225"
    assert linker.resolve("Elizaveta Peskova", "en", known_ids={"Q4161286"}) is None
    assert linker.resolve("Natalia Naryshkina", "ru", known_ids={"Q320225"}) is None
    assert linker.resolve("Erdoğan", "de").id == "Q39259"


def write(tmp_path, body, name="watchlist.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body), encoding="utf-8")
    return p


def test_validation_names_file_entry_and_field(tmp_path):
    p = write(tmp_path, """
        version: 1
        entries:
          - id: Q1
            type: PER
            name: A B
            surnames: [B]
            alises: {en: [A B]}
    """)
    with pytest.raises(ResourceError) as exc:
        load_entries(p)
    msg = str(exc.value)
    assert str(p) in msg and "entry 1 ('Q1')" in msg and "'alises'" in msg and "did you mean 'aliases'" in msg


@pytest.mark.parametrize("body,needle", [
    ("entries:\n  - type: PER\n    name: X\n    surnames: [X]\n", "field 'id'"),
    ("entries:\n  - id: Q1\n    type: XYZ\n    name: X\n    surnames: [X]\n", "field 'type'"),
    ("entries:\n  - id: Q1\n    type: PER\n    name: X\n", "field 'surnames'"),
    ("entries:\n  - id: Q1\n    type: ORG\n    name: X\n    aliases: {en: [X]}\n  - id: Q1\n    type: ORG\n    name: Y\n    aliases: {en: [Y]}\n", "duplicate"),
    ("entries:\n  - id: Q1\n    type: ORG\n    name: X\n    aliases: {en: [{text: X, case: loud}]}\n", "case must be"),
    ("entries: {}\n", "expected a mapping"),
    ("entries: [\n", "not valid YAML"),
])
def test_validation_errors(tmp_path, body, needle):
    with pytest.raises(ResourceError, match=needle):
        load_entries(write(tmp_path, body))


def test_missing_file_is_a_resource_error(tmp_path):
    with pytest.raises(ResourceError, match="file not found"):
        load_entries(tmp_path / "nope.yaml")


def test_explicit_case_sensitive_alias(tmp_path):
    p = write(tmp_path, """
        concepts:
          - id: concept:x
            type: TREATY
            name: Open Door
            aliases: {en: [{text: Open Door, case: sensitive}]}
    """, "concepts.yaml")
    linker = EntityLinker(load_entries(p, "concept"))
    assert ids(linker.link("The Open Door policy.", "en")) == ["concept:x"]
    assert linker.link("Leave the open door.", "en") == []


def synthetic_entries(n, seed=7):
    """A watchlist of ``n`` made-up people with names in Latin and Cyrillic."""
    rng = random.Random(seed)
    syll = ["ka", "ro", "mi", "sha", "lev", "dor", "nik", "tan", "vel", "zor", "bur", "gen", "pol", "rud"]
    lat2cyr = {"ka": "ка", "ro": "ро", "mi": "ми", "sha": "ша", "lev": "лев", "dor": "дор", "nik": "ник",
               "tan": "тан", "vel": "вел", "zor": "зор", "bur": "бур", "gen": "ген", "pol": "пол", "rud": "руд"}
    out = []
    for i in range(n):
        parts = [rng.choice(syll) for _ in range(3)] + ["ov"]
        lat = "".join(parts).capitalize()
        cyr = ("".join(lat2cyr.get(p, "ов") for p in parts)).capitalize()
        given = rng.choice(["Ivan", "Pavel", "Oleg", "Boris", "Yuri"])
        out.append(Entry(id=f"Q{10_000_000 + i}", label="PER", name=f"{given} {lat}", gender="m",
                         given_names=(given,), surnames=(lat, cyr), roles=("governor",),
                         aliases=(Alias(f"{given} {lat}", "en"),)))
    return out


def test_large_watchlist_builds_and_links():
    entries = synthetic_entries(10_000)
    linker = EntityLinker(entries)
    target = entries[1234]
    surname = target.surnames[0]
    got = linker.link(f"Governor {target.name} met reporters. Later {surname} said nothing.", "en")
    assert target.id in ids(got)
    cyr = linker.link(f"Губернатор {target.given_names[0]} {target.surnames[1]}а.", "ru")
    assert any(e.canonical_id == target.id or e.canonical_name.endswith(surname) for e in cyr)


def test_fuzzy_surnames_need_given_name_or_role_context(linker):
    assert by_name(linker.link("SVR chief Sergei Naryshkn arrived in Ankara.", "en"))["Sergei Naryshkn"] == "Sergei Naryshkin"
    assert by_name(linker.link("Foreign ministry spokeswoman Zakhrova said no.", "en")) == {"Zakhrova": "Maria Zakharova"}
    assert linker.link("The painter Zakhrova opened a show.", "en") == []
    assert linker.link("Ivan Naryshkn opened a shop.", "en") == []
