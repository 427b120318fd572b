"""LibriSpeech-style transcript normalization: numbers and symbols spelled out, uppercase, no punctuation.

LibriSpeech transcripts contain only ``A-Z``, the apostrophe and single spaces, so a character-level CTC
model trained on them never has to emit a digit or a symbol. :func:`normalize_transcript` maps free text
(such as the Asterisk prompt list) to that alphabet; :func:`number_to_words` is the number speller it uses.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
# Short scale, as spoken in US English (the Asterisk voice and LibriSpeech readers are American).
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))

# Ordinals are formed from the last word of the cardinal; only these are irregular.
_IRREGULAR_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}

# Spoken names of the symbols that survive into running text. '#' and '*' are the telephone keys, which
# telephony prompts (and most US speakers) call "pound" and "star".
SYMBOL_WORDS: dict[str, str] = {
    "&": "and",
    "%": "percent",
    "+": "plus",
    "=": "equals",
    "@": "at",
    "#": "pound",
    "*": "star",
}

_NUMBER_RE = re.compile(
    r"(?P<cur>\$)?(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?(?P<ord>st|nd|rd|th)?(?P<pct>%)?",
    re.IGNORECASE,
)
_DOTTED_INITIALS_RE = re.compile(r"\b((?:[A-Za-z]\.){2,})")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_to_words(n: int, *, ordinal: bool = False) -> str:
    """Spell an integer in US English words, e.g. ``1204 -> "one thousand two hundred four"``.

    Hyphens and "and" are left out on purpose: LibriSpeech writes "TWENTY ONE", and a character model should
    not learn an optional "AND". Negative numbers get "minus". ``ordinal=True`` gives "twenty first" etc.
    """
    if n < 0:
        return "minus " + number_to_words(-n, ordinal=ordinal)
    if n >= 1000 * _SCALES[0][0]:
        raise ValueError(f"number too large to spell: {n}")
    words: list[str] = []
    for scale, name in _SCALES:
        if n >= scale:
            words += _below_thousand(n // scale) + [name]
            n %= scale
    if n or not words:
        words += _below_thousand(n)
    if ordinal:
        last = words[-1]
        if last in _IRREGULAR_ORDINALS:
            words[-1] = _IRREGULAR_ORDINALS[last]
        elif last.endswith("y"):
            words[-1] = last[:-1] + "ieth"
        else:
            words[-1] = last + "th"
    return " ".join(words)


def digits_to_words(digits: str) -> str:
    """Read a digit string one digit at a time (``"4242" -> "four two four two"``)."""
    return " ".join(_ONES[int(d)] for d in digits)


def _spell_number(m: re.Match[str], digit_sequence_min_len: int | None) -> str:
    raw = m.group("num").replace(",", "")
    frac, suffix = m.group("frac"), m.group("ord")
    if m.group("cur") and not suffix and not m.group("pct") and (not frac or len(frac) == 3):
        dollars = number_to_words(int(raw)) + (" dollar" if raw.lstrip("0") == "1" else " dollars")
        cents = int(frac[1:]) if frac else 0
        if cents:
            cent_words = f"{number_to_words(cents)} cent" + ("" if cents == 1 else "s")
            dollars = cent_words if int(raw) == 0 else f"{dollars} {cent_words}"
        return f" {dollars} "
    if suffix and not frac:
        words = number_to_words(int(raw), ordinal=True)
    elif (
        digit_sequence_min_len is not None
        and "," not in m.group("num")
        and not frac
        and len(raw) >= digit_sequence_min_len
    ):
        # Phone numbers, extensions and PINs are read digit by digit, not as quantities.
        words = digits_to_words(raw)
    else:
        words = number_to_words(int(raw))
        if frac:
            words += " point " + digits_to_words(frac[1:])
        if suffix:  # "2.5th" is not a thing; keep the letters rather than dropping them
            words += " " + suffix
    if m.group("pct"):
        words += " percent"
    if m.group("cur"):  # rare forms like "$2.5%" or "$3rd": keep the number, then the unit
        words += " dollars"
    return f" {words} "


def normalize_transcript(
    text: str,
    *,
    spell_out: Collection[str] = (),
    digit_sequence_min_len: int | None = None,
) -> str:
    """Normalize free text to the LibriSpeech alphabet (``A-Z``, ``'``, single spaces).

    - Integers, thousands separators, decimals (``28.8`` -> "TWENTY EIGHT POINT EIGHT"), ordinals
      (``1st``, ``22nd``), percentages and ``$`` amounts (``$3.50`` -> "THREE DOLLARS FIFTY CENTS") become
      words; digits glued to letters are split (``3D`` -> "THREE D").
    - ``digit_sequence_min_len``: integers with at least this many digits are read digit by digit
      (telephone convention: ``dial 1234`` is spoken "one two three four"). ``None`` reads every integer as a
      quantity.
    - Dotted initials (``A.M.``) and the words in ``spell_out`` (acronyms read letter by letter, e.g. ``PBX``;
      matched case-sensitively) become separate letters.
    - ``& % + = @ # *`` become words (:data:`SYMBOL_WORDS`); hyphens, slashes and other punctuation separate
      words; apostrophes are kept inside words (``DON'T``) and dropped when used as quotes.
    - Accented letters lose their accents; any other character is removed.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    text = _DOTTED_INITIALS_RE.sub(lambda m: " " + " ".join(m.group(1).replace(".", "")) + " ", text)
    if spell_out:
        pattern = r"\b(" + "|".join(re.escape(w) for w in sorted(spell_out, key=len, reverse=True)) + r")\b"
        text = re.sub(pattern, lambda m: " " + " ".join(m.group(1)) + " ", text)
    text = _NUMBER_RE.sub(lambda m: _spell_number(m, digit_sequence_min_len), text)
    for symbol, word in SYMBOL_WORDS.items():
        text = text.replace(symbol, f" {word} ")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).upper()
    text = re.sub(r"[^A-Z']+", " ", text)
    # An apostrophe is part of a word only between letters (DON'T) or after a plural s (PARTIES').
    text = re.sub(r"(?<![A-Z])'|'(?![A-Z])(?<!S')", " ", text)
    return " ".join(text.split())
