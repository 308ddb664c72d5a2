"""A deterministic synthetic news corpus in six languages, ~5 KB per article.

Sentences mix watched names (in their language's spelling), lookalikes,
unknown names and filler, so that linking, NER and alert matching all have
realistic work. The seed article is always included.
"""

from __future__ import annotations

import random
from pathlib import Path

from core.ids import article_id, content_hash
from core.records import Article

ROOT = Path(__file__).resolve().parent.parent

SENTENCES = {
    "de": [
        "Der russische Außenminister Sergej Lawrow traf in Ankara seinen türkischen Amtskollegen Hakan Fidan.",
        "Kreml-Sprecher Dmitri Peskow wollte die Berichte weder bestätigen noch dementieren.",
        "Nach Angaben der Zeitung leitete der Chef des Auslandsgeheimdienstes, Sergej Naryschkin, die Delegation.",
        "Die Gespräche über den Vertrag New START sollen im Frühjahr fortgesetzt werden.",
        "Die Stadtverwaltung kündigte einen neuen Radweg entlang des Flusses an.",
        "Der Bürgermeister Thomas Albrecht eröffnete am Montag die neue Bibliothek.",
        "Die Inflation stieg im dritten Quartal stärker als erwartet.",
        "Experten rechnen mit weiteren Sanktionen gegen den Energiesektor.",
    ],
    "en": [
        "Russian Foreign Minister Sergei Lavrov met his Turkish counterpart in Ankara on Tuesday.",
        "Kremlin spokesman Dmitry Peskov declined to comment on the reports.",
        "CIA Director William Burns held talks with Sergei Naryshkin, the head of Russia's SVR.",
        "Washington wants to extend the New START treaty before it expires.",
        "The city council approved a new budget for public transport.",
        "Local runner Emma Collins won the half marathon for the second time.",
        "Oil prices fell after the latest inventory figures were published.",
        "Analysts expect the central bank to keep rates on hold.",
    ],
    "ru": [
        "Министр иностранных дел России Сергей Лавров провёл переговоры в Анкаре.",
        "Пресс-секретарь Кремля Дмитрий Песков отказался комментировать сообщения.",
        "Директор СВР Сергей Нарышкин встретился с директором ЦРУ Уильямом Бёрнсом.",
        "Стороны обсудили будущее Договора о СНВ-III.",
        "В Москве открылась новая станция метро.",
        "Футбольный клуб объявил о подписании контракта с новым тренером.",
        "Цены на бензин выросли на два процента за месяц.",
        "Синоптики обещают тёплую погоду до конца недели.",
    ],
    "uk": [
        "Міністр закордонних справ Росії Сергій Лавров прибув до Анкари.",
        "Речник Кремля Дмитро Пєсков не став коментувати ці повідомлення.",
        "Директор СЗР Сергій Наришкін очолив російську делегацію.",
        "Сторони обговорили долю договору СНО-3.",
        "У Києві відкрили новий міст через Дніпро.",
        "Місцева команда виграла чемпіонат області з волейболу.",
    ],
    "pl": [
        "Szef rosyjskiej dyplomacji Siergiej Ławrow przybył do Ankary.",
        "Rzecznik Kremla Dmitrij Pieskow odmówił komentarza.",
        "Szef SWR Siergiej Naryszkin spotkał się z dyrektorem CIA.",
        "Rozmowy dotyczyły przyszłości traktatu New START.",
        "W Krakowie otwarto nową linię tramwajową.",
        "Ceny mieszkań w dużych miastach nadal rosną.",
    ],
    "fr": [
        "Le ministre russe des Affaires étrangères Sergueï Lavrov est arrivé à Ankara.",
        "Le porte-parole du Kremlin Dmitri Peskov a refusé de commenter.",
        "Le chef du renseignement extérieur russe Sergueï Narychkine dirigeait la délégation.",
        "Les discussions portaient sur l'avenir du traité New START.",
        "La mairie a annoncé la rénovation de la piscine municipale.",
        "Le prix du pain a augmenté de trois pour cent cette année.",
    ],
}


def synthetic_articles(n: int, *, size: int = 5000, seed: int = 42, languages=None) -> list[Article]:
    rng = random.Random(seed)
    langs = list(languages or SENTENCES)
    out = []
    for i in range(n):
        lang = langs[i % len(langs)]
        pool = SENTENCES[lang]
        parts, total = [], 0
        while total < size:
            s = rng.choice(pool)
            parts.append(s)
            total += len(s) + 1
        body = " ".join(parts)
        title = f"{pool[rng.randrange(len(pool))][:60]} ({i})"
        chash = content_hash(title, body)
        out.append(Article(
            id=article_id(None, chash), url=None, canonical_url=None, source="bench", title=title, body=body,
            published=None, fetched="2026-01-01T00:00:00+00:00", content_hash=chash, language=lang,
        ))
    return out


def seed_article() -> Article:
    from core.settings import InputSettings
    from connectors.files import read_path
    from transforms.parse import to_article

    (raw,) = [r for r in read_path(ROOT / "seeds" / "000_f1290934ed803041.txt", InputSettings())]
    from dataclasses import replace

    return replace(to_article(raw, InputSettings()), language="de")
