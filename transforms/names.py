"""Names across languages and scripts: tokens with offsets, folding keys and inflection.

The watchlist matcher compares names through three views of each word:

* the casefolded surface (``Token.lower``), for exact aliases;
* a *folding key* (:func:`fold`) that transliterates Cyrillic to Latin and
  collapses spelling conventions of German, Polish, English and French
  transliterations, so that Naryschkin, Naryshkin, Naryszkin, Нарышкин and
  Наришкін all become ``narishkin``;
* an *inflection stem* (:func:`stem`) that strips case endings by rule for
  the language family of the text: Slavic case endings (Нарышкина,
  Нарышкиным, Ławrowowi, Захаровой) or the German genitive -s (Naryschkins).
  Both the watchlist and the text go through the same function, so the rule
  needs no per-name lists.

French "ch" (Narychkine) cannot be folded together with German "ch"
(Chodorkowski) by any single rule; such spellings are listed as explicit
aliases in the watchlist instead.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from unidecode import unidecode

# One table for Russian, Ukrainian and Belarusian letters. The Latin output is
# only an intermediate form: the folding rules below erase the differences
# between transliteration conventions anyway.
_CYRILLIC = {
    "а": "a", "б": "b", "в": "v", "г": "g", "ґ": "g", "д": "d", "е": "e", "ё": "e",
    "є": "ie", "ж": "zh", "з": "z", "и": "i", "і": "i", "ї": "i", "й": "i", "к": "k",
    "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t",
    "у": "u", "ў": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh",
    "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya",
}
# Letters unidecode would render in a way that hurts matching.
_LATIN_SPECIAL = {"ß": "ss", "ł": "l", "đ": "d", "ı": "i", "ø": "o", "æ": "ae", "œ": "oe", "þ": "th"}

# Ordered rewrite rules on lower-case ASCII. Each rule removes one difference
# between transliteration conventions (German, Polish, English, ISO 9-ish).
_RULES: tuple[tuple[str, str], ...] = (
    ("tsch", "ch"),   # German Ч: Tschernyschow
    ("szcz", "sh"),   # Polish Щ
    ("shch", "sh"),
    ("sch", "sh"),    # German Ш: Naryschkin
    ("sz", "sh"),     # Polish Ш: Naryszkin
    ("cz", "ch"),     # Polish Ч
    ("rz", "zh"),
    ("kh", "h"),      # English Х: Zakharova
    ("ch", "h"),      # German and Polish Х: Sacharowa, Zacharowa
    ("ck", "k"),
    ("ph", "f"),
    ("th", "t"),      # Anthony / Antony
    ("ou", "u"),      # French u
    ("w", "v"),       # German and Polish В: Lawrow, Ławrow
    ("j", "i"),       # Sergej, Dmitrij
    ("y", "i"),       # Sergey, Naryshkin
    ("zh", "sh"),     # Ж: Schoigu / Shoigu / Zhoigu become one
    ("z", "s"),       # German З: Sacharowa / Zakharova
    ("x", "ks"),
    ("q", "k"),
    ("c", "k"),       # Macron / Макрон
)
_VOWELS = set("aeiou")
_REPEAT = re.compile(r"(.)\1+")
_SOFT_IE = re.compile(r"(?<=[bdfgklmnprstv])ie")  # Polish softening: Siergiej, Pieskow
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# A word: letters and digits, with combining marks (stress marks in Russian
# texts such as Дми́трий) kept inside the word.
_TOKEN = re.compile(r"[^\W_](?:[^\W_]|[\u0300-\u036f\u0483-\u0489])*")
_HYPHENS = set("-\u2010\u2011\u2012\u2013\u00ad")
_SENTENCE_END = set(".!?:;\"'«»„“”()[]|\n•")


def transliterate(text: str) -> str:
    """Lower-case Latin transliteration of any text, without diacritics."""
    out = []
    for ch in unicodedata.normalize("NFC", text.lower()):
        if ch in _CYRILLIC:
            out.append(_CYRILLIC[ch])
        elif ch in _LATIN_SPECIAL:
            out.append(_LATIN_SPECIAL[ch])
        elif ch.isascii():
            out.append(ch)
        else:
            decomposed = unicodedata.normalize("NFD", ch)
            base = "".join(c for c in decomposed if not unicodedata.combining(c))
            out.append(base if base.isascii() else unidecode(base))
    return "".join(out)


@lru_cache(maxsize=200_000)
def fold(word: str) -> str:
    """The folding key of one word: script, diacritics and spelling conventions removed.

    >>> {fold(w) for w in ["Naryschkin", "Naryshkin", "Naryszkin", "Нарышкин", "Наришкін"]}
    {'narishkin'}
    """
    s = _NON_ALNUM.sub("", transliterate(word))
    for old, new in _RULES:
        if old in s:
            s = s.replace(old, new)
    s = _SOFT_IE.sub("e", s)
    return _REPEAT.sub(r"\1", s)


def fold_phrase(text: str) -> tuple[str, ...]:
    """Folding keys of the words of a phrase."""
    return tuple(k for k in (fold(t.text) for t in tokenize(text)) if k)


# Case endings of Russian, Ukrainian, Belarusian and Polish nouns, names and
# adjectival surnames, written as they look after folding (й→i, я→ia, ю→iu,
# ы→i, Polish ie→e). Longest first, so "oiu" wins over "iu". Plural endings
# such as -ami/-am are left out: names are rarely plural, and they would eat
# the end of William or Adam.
_SLAVIC_ENDINGS = tuple(sorted({
    "ogo", "ego", "omu", "emu", "oiu", "eiu", "uiu", "aia", "iaia", "imi",
    "iei", "iem", "ovi", "evi", "ih", "im", "om", "em", "oi", "ei",
    "ia", "iu", "a", "u", "e", "i", "o",
}, key=len, reverse=True))
_MIN_STEM = 3

SLAVIC = frozenset({"ru", "uk", "be", "bg", "pl", "cs", "sk", "sl", "hr", "sr", "bs", "mk"})
GERMANIC_GENITIVE = frozenset({"de", "nl", "lb"})


def family(language: str | None) -> str | None:
    """The inflection family of a language code: 'slavic', 'de' or None."""
    if not language:
        return None
    code = language.split("-")[0].lower()
    if code in SLAVIC:
        return "slavic"
    if code in GERMANIC_GENITIVE:
        return "de"
    return None


@lru_cache(maxsize=200_000)
def stem_slavic(key: str) -> str:
    """Strip one Slavic case ending from a folded word, keeping at least three letters.

    A stem-final vowel goes too: folding merges doubled letters (Сергеем →
    ``sergem``), so "serg" is the one stem that Сергей, Сергея, Сергеем and
    Сергій share.
    """
    for ending in _SLAVIC_ENDINGS:
        if key.endswith(ending) and len(key) - len(ending) >= _MIN_STEM:
            key = key[: -len(ending)]
            break
    while len(key) > _MIN_STEM and key[-1] in _VOWELS:
        key = key[:-1]
    return key


def stem_german(key: str) -> str:
    """Strip the German genitive -s/-es (Naryschkins, des Vertrags, des Geheimdienstes)."""
    if len(key) >= 8 and key.endswith("es"):
        return key[:-2]
    if len(key) >= 5 and key.endswith("s"):
        return key[:-1]
    return key


def stem(key: str, fam: str | None) -> str:
    """The inflection stem of a folded word for a language family (see :func:`family`)."""
    if fam == "slavic":
        return stem_slavic(key)
    if fam == "de":
        return stem_german(key)
    return key


def is_feminine_form(surface_key: str, base_key: str) -> bool:
    """Whether a surname form is the other gender's form of ``base_key``.

    Slavic surnames change with gender: Нарышкин/Нарышкина, Захаров/Захарова,
    Зеленский/Зеленская, Ławrow/Ławrowa. An -a form of a male surname is also
    the male genitive, so callers treat it as ambiguous, not as a mismatch.
    """
    if base_key.endswith("a"):
        return False
    return surface_key.startswith(base_key[:-1] if base_key.endswith("i") else base_key) and surface_key.endswith(("a", "aia"))


_PATRONYMIC_STEMS = ("ovih", "evih", "ovn", "evn", "ivn", "ovit", "evit", "ovis", "evis")


def is_patronymic(key: str) -> bool:
    """Whether a folded word looks like an East Slavic patronymic (Викторович, Jewgenjewitsch)."""
    if len(key) < 6:
        return False
    s = stem_slavic(key)
    return s.endswith(_PATRONYMIC_STEMS) or key.endswith(_PATRONYMIC_STEMS)


@dataclass(frozen=True, slots=True)
class Token:
    """A word of a text with its character offsets and matching keys."""

    start: int
    end: int
    text: str
    lower: str
    key: str

    @property
    def is_capitalised(self) -> bool:
        return self.text[:1].isupper()

    @property
    def is_upper(self) -> bool:
        letters = [c for c in self.text if c.isalpha()]
        return len(letters) >= 2 and all(c.isupper() for c in letters)


def tokenize(text: str) -> list[Token]:
    """Split text into word tokens that keep exact offsets into ``text``."""
    tokens = []
    for m in _TOKEN.finditer(text):
        word = m.group()
        lower = unicodedata.normalize("NFC", word).casefold()
        tokens.append(Token(m.start(), m.end(), word, lower, fold(word)))
    return tokens


def hyphen_before(text: str, tokens: list[Token], i: int) -> bool:
    """Whether token ``i`` is joined to the previous token by a hyphen (Kreml-Sprecher)."""
    if i == 0:
        return False
    gap = text[tokens[i - 1].end : tokens[i].start]
    return len(gap) == 1 and gap in _HYPHENS


def hyphen_after(text: str, tokens: list[Token], i: int) -> bool:
    if i + 1 >= len(tokens):
        return False
    gap = text[tokens[i].end : tokens[i + 1].start]
    return len(gap) == 1 and gap in _HYPHENS


def starts_sentence(text: str, tokens: list[Token], i: int) -> bool:
    """Whether token ``i`` opens a sentence, a heading or a quotation."""
    if i == 0:
        return True
    gap = text[tokens[i - 1].end : tokens[i].start]
    return any(c in _SENTENCE_END for c in gap)


def is_shouting(text: str) -> bool:
    """Whether a text is written in capitals (a shouted headline), where case says nothing."""
    alpha = sum(map(str.isalpha, text))
    if alpha < 12:
        return False
    return sum(map(str.isupper, text)) / alpha > 0.6


# Words that precede a name without being a given name.
HONORIFICS = frozenset(fold(w) for w in (
    "Mr", "Mrs", "Ms", "Miss", "Dr", "Prof", "Sir", "Lady", "Herr", "Frau", "Pan", "Pani", "M", "Mme",
    "Monsieur", "Madame", "Mademoiselle", "Mlle", "Dame", "господин", "госпожа", "г", "пан", "пані",
    "Genosse", "Minister", "President", "Präsident", "Premier", "General", "Admiral", "Senator",
))

# Common given names in the watched languages. They let the matcher tell
# "Natalia Naryshkina" or "Andrei Lavrov" (another person) from a mention of
# the watched Sergei Naryshkin or Sergei Lavrov; the given names of all
# watchlist entries are added to this set when the watchlist loads.
COMMON_GIVEN_NAMES = frozenset("""
Aleksandr Aleksandra Aleksander Aleksei Alexei Alexey Alexander Alexandra Alexandre Alina Alla Anastasia Anatoly Anatoli
Andrei Andrey Andriy Andrii Andrzej Andreas Anna Anne Anton Antonina Arkady Artem Artyom Boris Bohdan Claire Christian
Christine Daria Darya Dariusz David Denis Dmitry Ekaterina Elena Elisabeth Elizabeth Elizaveta Emma Evgeny Evgenia
Ewa Fyodor Galina Gennady Georg George Georgy Grigory Hanna Hans Helena Igor Ilya Inna Irina Iryna Isabelle Ivan
Jakub James Jan Jane Jean Joanna Johann John Julia Juliya Jürgen Karen Katarzyna Kate Katherine Kira Kirill Klaus
Konstantin Krzysztof Ksenia Kseniya Larisa Laura Leonid Lisa Lyudmila Ludmila Magdalena Małgorzata Marcin Margarita
Maria Marie Marina Mark Martin Mary Maxim Maksim Michael Michał Michel Mikhail Mykhailo Mykola Nadezhda Natalia
Natalya Nataliya Nathalie Nikita Nikolai Nikolay Nina Oksana Oleg Oleh Oleksandr Oleksii Olena Olga Pavel Pavlo
Paul Paweł Peter Petr Petro Philippe Pierre Piotr Polina Pyotr Richard Robert Roman Ruslan Sarah Sergei Sofia Sophie
Stanislav Stefan Stepan Susan Svetlana Taras Tatiana Tatyana Thomas Timur Tomasz Ulrich Vadim Valentina Valery Valentin
Vasily Vera Victoria Viktor Viktoria Vitaly Vitali Vladimir Vladislav Volodymyr Wolfgang Yaroslav Yekaterina Yelena
Yelizaveta Yevgeny Yulia Yuri Yury Yuliya Zoya Nikolaus Friedrich Frank Olaf Annalena Ursula Ekaterina Dominik
Александр Александра Алексей Алла Анастасия Анатолий Андрей Анна Антон Аркадий Артём Артем Борис Вадим Валентина
Валерий Василий Вера Виктор Виктория Виталий Владимир Владислав Галина Геннадий Георгий Григорий Дарья Денис Дмитрий
Евгений Евгения Екатерина Елена Елизавета Иван Игорь Илья Инна Ирина Кирилл Константин Ксения Лариса Леонид Людмила
Максим Маргарита Марина Мария Михаил Надежда Наталья Наталия Никита Николай Нина Оксана Олег Ольга Павел Пётр Петр
Полина Роман Руслан Светлана Сергей Софья Станислав Степан Татьяна Тимур Фёдор Федор Юлия Юрий Ярослав Олександр
Олексій Олена Ольга Андрій Богдан Василь Віктор Віталій Володимир Ганна Дмитро Євген Іван Ігор Ірина Микола
Михайло Наталія Олег Павло Петро Сергій Тарас Юлія Юрій Ярослава Оксана Катерина Людмила Єлизавета Анастасія
""".split())


@lru_cache(maxsize=1)
def common_given_name_keys() -> frozenset[str]:
    keys = set()
    for name in COMMON_GIVEN_NAMES:
        k = fold(name)
        keys.add(k)
        keys.add(stem_slavic(k))
    return frozenset(keys)


def name_key(text: str) -> str:
    """A grouping key for an unknown name: folded words, lower case, space-separated.

    "Konstantin Jaroschenko" and "Константин Ярошенко" share the key
    ``konstantin iaroshenko``.
    """
    return " ".join(fold_phrase(text))
