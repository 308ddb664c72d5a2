"""The search query language: parsing, errors with positions, FTS5 rendering, filters."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from core.query import (
    And,
    Not,
    Or,
    Phrase,
    QueryError,
    QuerySyntaxError,
    SearchQuery,
    Term,
    fold,
    fold_translate,
    leaves,
    parse,
    parse_time,
    to_fts5,
)


def test_bare_terms_are_an_implicit_and():
    node = parse("peskov lavrov")
    assert node == And((Term("peskov", pos=0), Term("lavrov", pos=7)), pos=0)


def test_operators_phrases_and_grouping():
    node = parse('("new start" OR snv) AND NOT sport')
    assert isinstance(node, And)
    group, negated = node.children
    assert isinstance(group, Or)
    assert group.children[0] == Phrase("new start", pos=1)
    assert group.children[1].text == "snv"
    assert negated == Not(Term("sport", pos=29), pos=25)


def test_precedence_and_binds_tighter_than_or():
    node = parse("a b OR c")
    assert isinstance(node, Or)
    assert [type(c) for c in node.children] == [And, Term]


def test_minus_negates_but_a_hyphen_inside_a_word_does_not():
    node = parse("ankara -sport US-Beamten")
    assert isinstance(node, And)
    assert node.children[1] == Not(Term("sport", pos=8), pos=7)
    assert node.children[2].text == "US-Beamten"


def test_lower_case_operators_are_words():
    node = parse("war and peace")
    assert [c.text for c in node.children] == ["war", "and", "peace"]


def test_prefix_and_field_filters():
    node = parse("title:verhandl* body:\"New START\"")
    assert node.children[0] == Term("verhandl", prefix=True, field="title", pos=6)
    assert node.children[1] == Phrase("New START", field="body", pos=21)
    grouped = parse("title:(a OR b)")
    assert all(leaf.field == "title" for leaf in leaves(grouped))


def test_punctuation_only_words_are_dropped():
    assert parse("peskov - !!! lavrov") == parse("peskov lavrov")
    assert parse("   ") is None
    assert parse("") is None


def test_double_negation_cancels():
    assert parse("a NOT -b") == And((Term("a", pos=0), Term("b", pos=7)), pos=0)


def test_leaves_skip_negated_words_by_default():
    node = parse('naryshkin "new start" -sport')
    assert [l.text for l in leaves(node)] == ["naryshkin", "new start"]
    assert [l.text for l in leaves(node, positive_only=False)] == ["naryshkin", "new start", "sport"]


@pytest.mark.parametrize(
    "query, position, fragment",
    [
        ('"new start', 0, "unterminated quote"),
        ("(peskov OR lavrov", 0, "unbalanced '('"),
        ("peskov)", 6, "unbalanced ')'"),
        ("peskov AND", 7, "AND needs"),
        ("OR peskov", 0, "expected a word"),
        ("peskov OR", 7, "OR needs"),
        ("peskov ()", 7, "empty parentheses"),
        ("-sport", 0, "NOT needs something to subtract from"),
        ("NOT sport", 0, "NOT needs something to subtract from"),
        ("ankara OR NOT sport", 10, "NOT inside OR"),
        ("!!! ???", 0, "no searchable words"),
        ("title:", 0, "'title:' needs"),
        ("title:(a body:b)", 9, "inside a 'title:' group"),
    ],
)
def test_syntax_errors_name_the_position(query, position, fragment):
    with pytest.raises(QuerySyntaxError) as err:
        parse(query)
    assert err.value.position == position
    assert fragment in str(err.value)
    assert f"position {position}" in str(err.value)
    assert err.value.pointer().splitlines()[1] == " " * position + "^"


def test_fts5_rendering_quotes_every_word():
    assert to_fts5(parse("peskov lavrov")) == '("peskov" AND "lavrov")'
    assert to_fts5(parse('"new start" OR snv')) == '("new start" OR "snv")'
    assert to_fts5(parse("ankara -sport -football")) == '(("ankara" NOT "sport") NOT "football")'
    assert to_fts5(parse("verhandl*")) == '"verhandl"*'
    assert to_fts5(parse("title:ankara")) == 'title : "ankara"'
    # A quote escaped inside a phrase is doubled for FTS5.
    assert to_fts5(parse(r'"he said \"no\""')) == '"he said ""no"""'


HOSTILE = [
    'NEAR(a b)', 'a:b', 'a^b', '"a" "b', '*', 'a * b', '^start', '{title}: x', 'col:"x"', "o'neil",
    'x AND (y OR "z))', 'a"b"c', '-', '--a', '+a', 'a - - b', "SNV-III", "U.S.", "C++", "#tag @user",
    'title:"', "body:x*y", "\\\"", "ß", "Нарышкин*", "a\tb\nc", "(((a)))", "a OR (b AND -c)",
]


@pytest.mark.parametrize("query", HOSTILE)
def test_no_input_breaks_fts5(query):
    """Whatever parses must run in SQLite FTS5; whatever does not, fails with our own error."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(title, body, tokenize='unicode61 remove_diacritics 2')")
    db.execute("INSERT INTO t VALUES ('SNV-III U.S. o''neil', 'x y z Нарышкин a b c')")
    try:
        node = parse(query)
    except QuerySyntaxError:
        return
    if node is None:
        return
    db.execute("SELECT count(*) FROM t WHERE t MATCH ?", (to_fts5(node),)).fetchone()


def test_search_query_validates_filters():
    q = SearchQuery("peskov", entities=["Q4161286"], languages=["DE"], limit=5)
    assert q.languages == ["de"]
    assert isinstance(q.ast, Term)
    assert SearchQuery().ast is None
    with pytest.raises(QueryError, match="limit"):
        SearchQuery("x", limit=0)
    with pytest.raises(QueryError, match="offset"):
        SearchQuery("x", offset=-1)
    with pytest.raises(QueryError, match="since"):
        SearchQuery("x", since="2022-12-01", until="2022-11-01")
    with pytest.raises(QuerySyntaxError):
        SearchQuery('"open')
    with pytest.raises(QueryError, match="sort"):
        SearchQuery("x", sort="random")
    with pytest.raises(QueryError, match="entities"):
        SearchQuery("x", entities=[""])


def test_parse_time_forms():
    assert parse_time("2022-11-10") == datetime(2022, 11, 10, tzinfo=timezone.utc)
    end = parse_time("2022-11-10", end_of_day=True)
    assert end.date().isoformat() == "2022-11-10" and end.hour == 23
    assert parse_time("2022-11-10T08:00:00+02:00") == datetime(2022, 11, 10, 6, tzinfo=timezone.utc)
    assert parse_time("2022-11-10T08:00:00Z").tzinfo is not None
    now = datetime(2024, 1, 8, tzinfo=timezone.utc)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("24h", now=now) == now - timedelta(hours=24)
    with pytest.raises(QueryError, match="not a date"):
        parse_time("last tuesday")


def test_search_query_to_dict_is_json_ready():
    import json

    q = SearchQuery("a", since="2022-11-01", until="2022-11-30", topics=["sanctions"])
    d = json.loads(json.dumps(q.to_dict()))
    assert d["since"].startswith("2022-11-01T00:00:00")
    assert d["until"].startswith("2022-11-30T23:59:59")
    assert d["topics"] == ["sanctions"]


def test_fold_makes_spellings_equal():
    assert fold("Пётр") == fold("Петр") == "петр"
    assert fold("Außenminister") == fold("AUSSENMINISTER") == "aussenminister"
    assert fold("Łódź") == "lodz" and fold("Erdoğan") == "erdogan"
    assert fold("Ла\u0301вров") == "лавров"  # a stress mark vanishes
    assert fold("Verhand\u00adlungen") == "verhandlungen"  # so does a soft hyphen
    assert fold("SNV–III «New START»") == "snv iii  new start "


def test_fold_translate_keeps_length_and_case():
    text = "Außen-Minister «Ёлкин» d’Alembert"
    out = fold_translate(text)
    assert len(out) == len(text)
    assert out == "Außen Minister  Елкин  d'Alembert"
