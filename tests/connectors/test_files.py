"""Reading article files: the seed format, JSON, JSON Lines, HTML, bad input and the Beam source."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from connectors.base import Source
from connectors.files import FileSource, ReadFromFiles, read_file, read_path
from core.records import DeadLetter, RawArticle
from core.settings import SEEDS, InputSettings

FIXTURES = Path(__file__).parent / "fixtures"
SEED = SEEDS / "000_f1290934ed803041.txt"
SETTINGS = InputSettings()

GERMAN = (
    "Grüße aus München: Gespräche über Abrüstung\n\n"
    "Der Außenminister äußerte sich am Montag zu den Gesprächen über die Begrenzung strategischer Waffen. "
    "Die Verhandlungen würden fortgesetzt, hieß es aus dem Ministerium."
)
FRENCH = (
    "Négociations à Genève\n\n"
    "Les négociations à Genève ont été reportées, a déclaré le ministère français des Affaires étrangères."
)


def articles(records) -> list[RawArticle]:
    return [r for r in records if isinstance(r, RawArticle)]


def letters(records) -> list[DeadLetter]:
    return [r for r in records if isinstance(r, DeadLetter)]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_seed_text_file():
    [art] = read_path(SEED, SETTINGS)
    assert art.title == "Medien: Russland und USA führen Gespräche in Ankara"
    assert art.body.startswith("Wie die russische Zeitung Kommersant berichtet")
    assert "Maria Sacharowa" in art.body and "SNV-III oder New START" in art.body
    assert art.source == "file" and art.content_type == "text"
    assert art.origin == str(SEED) and art.meta["encoding"] == "utf-8" and art.meta["mtime"]


def test_text_without_blank_second_line_is_all_body(tmp_path):
    [art] = read_path(write(tmp_path / "a.txt", "first line\nsecond line of the same paragraph\n"), SETTINGS)
    assert art.title is None and art.body == "first line\nsecond line of the same paragraph"


def test_folder_is_recursive_sorted_and_skips_other_extensions(tmp_path, caplog):
    write(tmp_path / "b.txt", "B title\n\nB body text")
    write(tmp_path / "sub" / "a.txt", "A title\n\nA body text")
    write(tmp_path / "a.txt", "Top title\n\nTop body text")
    write(tmp_path / "rules.yaml", "rules: []\n")
    write(tmp_path / "notes.md", "# notes\n")
    write(tmp_path / ".hidden" / "secret.txt", "Hidden\n\nnot read")
    write(tmp_path / ".DS_Store", b"\x00\x01")
    with caplog.at_level("DEBUG", logger="connectors.files"):
        records = list(read_path(tmp_path, SETTINGS))
    assert [a.title for a in records] == ["Top title", "B title", "A title"]
    assert list(read_path(tmp_path, SETTINGS)) != [] and [r.origin for r in read_path(tmp_path, SETTINGS)] == [r.origin for r in records]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("file skipped")]
    assert len(skipped) == 2 and any("rules.yaml" in m for m in skipped)
    assert any("files=3 skipped=2 articles=3 dead=0" in r.getMessage() for r in caplog.records)


def test_seeds_folder_reads_only_articles():
    records = list(read_path(SEEDS, SETTINGS))
    assert records and all(isinstance(r, RawArticle) for r in records)
    assert all(Path(r.origin).suffix in (".txt", ".json", ".jsonl", ".html", ".htm") for r in records)


def test_jsonl_bad_line_dead_letters_only_itself():
    path = FIXTURES / "articles.jsonl"
    records = list(read_path(path, SETTINGS))
    arts, dead = articles(records), letters(records)
    assert [a.origin for a in arts] == [f"{path}:1", f"{path}:2", f"{path}:4"]
    first, second, third = arts
    assert (first.title, first.url, first.published, first.language, first.source, first.guid) == (
        "Lawrow trifft Blinken", "https://news.example.org/a/1", "2022-01-21T10:00:00Z", "de", "Beispielzeitung", "a-1")
    assert second.published == "2022-09-30T10:00:00+00:00" and second.content_type == "html" and second.source == "file"
    assert third.title == "Переговоры в Анкаре" and third.source == "РИА" and third.guid == "ru-3"
    assert third.body == "Сергей Нарышкин провёл переговоры в Анкаре.\n\nДмитрий Песков не подтвердил встречу."
    bad_json, bad_record = dead
    assert bad_json.reason == "bad_json" and bad_json.origin == f"{path}:3" and "line 3 column" in bad_json.detail
    assert bad_json.payload.startswith('{"title": "broken"')
    assert bad_record.reason == "bad_record" and bad_record.origin == f"{path}:6" and json.loads(bad_record.payload)["author"] == "nobody"


def test_jsonl_oversize_line_and_invalid_utf8_line(tmp_path):
    good = json.dumps({"title": "ok", "body": "fine body"})
    huge = json.dumps({"title": "huge", "body": "x" * 5000})
    path = write(tmp_path / "mix.jsonl", (good + "\n" + huge + "\n").encode() + b'{"title": "caf\xe9", "body": "b"}\n' + good.encode())
    records = list(read_path(path, InputSettings(max_article_bytes=1000)))
    assert [(type(r).__name__, r.origin.rsplit(":", 1)[1]) for r in records] == [
        ("RawArticle", "1"), ("DeadLetter", "2"), ("DeadLetter", "3"), ("RawArticle", "4")]
    too_large, bad_encoding = letters(records)
    assert too_large.reason == "too_large" and "truncated" in too_large.payload and len(too_large.payload) < 2000
    assert bad_encoding.reason == "bad_encoding"
    assert base64.b64decode(bad_encoding.payload.removeprefix("base64:")) == b'{"title": "caf\xe9", "body": "b"}\n'


def test_json_list_and_object():
    path = FIXTURES / "articles.json"
    arts = list(read_path(path, SETTINGS))
    assert [a.origin for a in arts] == [f"{path}#0", f"{path}#1"]
    assert arts[0].url == "https://news.example.com/ankara" and arts[0].language == "en"
    assert arts[1].body.startswith("Kremlin spokesman") and arts[1].meta["extra"] == {"author": "Desk"}


def test_wrapped_json_export(tmp_path):
    doc = {"status": "ok", "totalResults": 2, "articles": [
        {"source": {"id": None, "name": "Example News"}, "title": "One", "description": "First text", "url": "https://e.example/1",
         "publishedAt": "2022-11-14T09:00:00Z"},
        {"source": {"id": "x", "name": None}, "title": "Two", "content": "Second text"},
    ]}
    path = write(tmp_path / "export.json", json.dumps(doc))
    one, two = read_path(path, SETTINGS)
    assert (one.title, one.source, one.body, one.published, one.origin) == ("One", "Example News", "First text", "2022-11-14T09:00:00Z", f"{path}#0")
    assert (two.title, two.source, two.body) == ("Two", "x", "Second text")


@pytest.mark.parametrize("content,reason,detail", [
    ('{"title": "x", "body": "y",}', "bad_json", "line 1 column 28"),
    ("[\n  {\"title\": \"a\"\n  \"body\": \"b\"}\n]", "bad_json", "line 3 column 3"),
    ("[]", "empty", "no records"),
    ('["just a string"]', "bad_record", "JSON object"),
    ('{"title": "t", "body": {"nested": true}}', "bad_record", "must be text"),
    ('{"title": "Only a title"}', "empty", "no body"),
    ('{"title": "", "body": "  "}', "empty", "no body"),
    ('{"title": "", "body": ""}', "empty", "empty title and body"),
])
def test_bad_json_files(tmp_path, content, reason, detail):
    [letter] = read_path(write(tmp_path / "bad.json", content), SETTINGS)
    assert letter.reason == reason and detail in letter.detail and letter.stage == "files.read"
    assert letter.payload  # the input is kept


def test_latin1_german_is_guessed_and_recorded(tmp_path):
    # Every equally plausible single-byte charset reads these bytes the same way.
    [art] = read_path(write(tmp_path / "de.txt", GERMAN.encode("latin-1")), SETTINGS)
    assert art.title == "Grüße aus München: Gespräche über Abrüstung"
    assert "Außenminister äußerte" in art.body
    assert art.meta["encoding_guessed"] is True and art.meta["encoding_candidates"]


def test_ambiguous_latin1_is_dead_lettered_with_the_bytes(tmp_path):
    # cp1250 and cp1252 both fit but disagree ("à" vs "ŕ"): no guess is safe.
    data = FRENCH.encode("latin-1")
    [letter] = read_path(write(tmp_path / "fr.txt", data), SETTINGS)
    assert letter.reason == "bad_encoding" and "cp1252" in letter.detail
    assert base64.b64decode(letter.payload.removeprefix("base64:")) == data


def test_random_bytes_are_bad_encoding(tmp_path):
    data = bytes(range(128, 256)) * 4
    [letter] = read_path(write(tmp_path / "noise.txt", data), SETTINGS)
    assert letter.reason == "bad_encoding"
    assert base64.b64decode(letter.payload.removeprefix("base64:")) == data


@pytest.mark.parametrize("codec", ["utf-16", "utf-8-sig", "utf-32"])
def test_byte_order_marks(tmp_path, codec):
    [art] = read_path(write(tmp_path / "bom.txt", "Заголовок\n\nТекст статьи о переговорах.".encode(codec)), SETTINGS)
    assert art.title == "Заголовок" and art.body == "Текст статьи о переговорах."


@pytest.mark.parametrize("content,name", [(b"", "empty.txt"), (b"  \n\n ", "blank.txt"), (b"Title only\n", "title.txt"),
                                          (b"", "empty.json"), (b"", "empty.html"), (b"\n\n", "empty.jsonl")])
def test_empty_files(tmp_path, content, name):
    [letter] = read_path(write(tmp_path / name, content), SETTINGS)
    assert letter.reason == "empty"


def test_oversize_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = write(tmp_path / "big.txt", "Big title\n\n" + "Wort " * 2000)
    original = pathlib.Path.read_bytes

    def guarded(self):
        assert self != path, "oversize file was read whole"
        return original(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", guarded)
    [letter] = read_path(path, InputSettings(max_article_bytes=1000))
    assert letter.reason == "too_large" and str(path.stat().st_size) in letter.detail
    assert letter.payload.startswith("Big title") and "truncated" in letter.payload


def test_html_page_main_text_only():
    [art] = read_path(FIXTURES / "article.html", SETTINGS)
    assert art.title == "Medien: Russland und USA führen Gespräche in Ankara"
    assert "Sergej Naryschkin" in art.body and "Dmitri Peskow" in art.body
    for boilerplate in ("Startseite", "Newsletter", "Meistgelesen", "Impressum", "Alle Rechte", "tracking"):
        assert boilerplate not in art.body
    assert not art.body.startswith(art.title)  # the headline is not repeated
    assert art.url == "https://zeitung.example.org/politik/ankara-gespraeche"
    assert art.published == "2022-11-14" and art.language == "de"
    assert art.source == "Beispielzeitung" and art.content_type == "text" and art.meta["extracted_by"] == "trafilatura"


def test_html_fallback_without_trafilatura_result(tmp_path, monkeypatch):
    import trafilatura

    monkeypatch.setattr(trafilatura, "bare_extraction", lambda *a, **k: None)
    [art] = read_path(FIXTURES / "article.html", SETTINGS)
    assert art.meta["extracted_by"] == "lxml"
    assert "Sergej Naryschkin" in art.body
    for boilerplate in ("Startseite", "Newsletter", "Meistgelesen", "Impressum", "tracking"):
        assert boilerplate not in art.body


def test_html_declared_charset(tmp_path):
    page = ("<html><head><meta http-equiv='Content-Type' content='text/html; charset=iso-8859-1'><title>Négociations</title></head>"
            "<body><article><p>" + "Les négociations à Genève ont été reportées. " * 12 + "</p></article></body></html>")
    [art] = read_path(write(tmp_path / "fr.html", page.encode("latin-1")), SETTINGS)
    assert "négociations à Genève" in art.body and art.meta["encoding"] == "iso8859-1"
    assert "encoding_guessed" not in art.meta


def test_html_without_text_is_empty(tmp_path):
    page = "<html><head><title>Menu</title><script>var a = 1;</script></head><body><nav><a href='/'>Home</a></nav><footer>Impressum</footer></body></html>"
    [letter] = read_path(write(tmp_path / "nav.html", page), SETTINGS)
    assert letter.reason == "empty" and "Impressum" in letter.payload


def test_missing_path_and_unknown_single_file(tmp_path):
    [letter] = read_path(tmp_path / "nope", SETTINGS)
    assert letter.reason == "not_found"
    assert list(read_path(write(tmp_path / "x.yaml", "a: 1"), SETTINGS)) == []
    assert list(read_file(tmp_path / "x.yaml", SETTINGS)) == []


def test_file_source_resumes_from_its_position(tmp_path):
    shutil.copy(SEED, tmp_path / "seed.txt")
    source = FileSource([tmp_path], SETTINGS)
    assert isinstance(source, Source) and source.next_poll_s() is None
    assert len(list(source.poll())) == 1
    resumed = FileSource([tmp_path], SETTINGS, position=json.loads(json.dumps(source.position())))
    assert list(resumed.poll()) == []
    write(tmp_path / "new.txt", "New title\n\nNew body")
    os.utime(tmp_path / "seed.txt", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert sorted(a.title for a in resumed.poll()) == ["Medien: Russland und USA führen Gespräche in Ankara", "New title"]


def test_read_from_files_pipeline(tmp_path):
    shutil.copy(SEED, tmp_path / "seed.txt")
    shutil.copy(FIXTURES / "articles.jsonl", tmp_path / "articles.jsonl")
    write(tmp_path / "rules.yaml", "rules: []\n")
    write(tmp_path / "empty.txt", "")
    paths = [tmp_path, FIXTURES / "article.html", tmp_path / "missing"]
    with TestPipeline() as p:
        arts, dead = p | ReadFromFiles(paths, SETTINGS)
        assert_that(arts | "Titles" >> beam.Map(lambda a: a.title), equal_to([
            "Medien: Russland und USA führen Gespräche in Ankara",
            "Medien: Russland und USA führen Gespräche in Ankara",
            "Lawrow trifft Blinken", "Sacharowa zu New START", "Переговоры в Анкаре",
        ]), label="articles")
        assert_that(dead | "Reasons" >> beam.Map(lambda d: d.reason),
                    equal_to(["bad_json", "bad_record", "empty", "not_found"]), label="dead")
