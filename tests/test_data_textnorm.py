"""Number spelling, LibriSpeech-style normalization and the Asterisk prompt-list rules."""

from __future__ import annotations

import pytest

from seqwin.data.errors import IssueLog
from seqwin.data.prompts import normalize_prompt, parse_prompt_list
from seqwin.data.textnorm import normalize_transcript, number_to_words


@pytest.mark.parametrize(
    ("n", "cardinal", "ordinal"),
    [
        (0, "zero", "zeroth"),
        (1, "one", "first"),
        (2, "two", "second"),
        (3, "three", "third"),
        (5, "five", "fifth"),
        (8, "eight", "eighth"),
        (9, "nine", "ninth"),
        (12, "twelve", "twelfth"),
        (15, "fifteen", "fifteenth"),
        (20, "twenty", "twentieth"),
        (21, "twenty one", "twenty first"),
        (40, "forty", "fortieth"),
        (99, "ninety nine", "ninety ninth"),
        (100, "one hundred", "one hundredth"),
        (101, "one hundred one", "one hundred first"),
        (1000, "one thousand", "one thousandth"),
        (1234, "one thousand two hundred thirty four", "one thousand two hundred thirty fourth"),
        (2_000_000_001, "two billion one", "two billion first"),
        (-7, "minus seven", "minus seventh"),
    ],
)
def test_number_to_words(n: int, cardinal: str, ordinal: str) -> None:
    assert number_to_words(n) == cardinal
    assert number_to_words(n, ordinal=True) == ordinal


def test_number_to_words_rejects_huge() -> None:
    with pytest.raises(ValueError):
        number_to_words(10**15)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, world!", "HELLO WORLD"),
        ("I'd say \"don't\" -- 'quoted' parties' dues.", "I'D SAY DON'T QUOTED PARTIES' DUES"),
        ("The 1st and 22nd of 1,250", "THE FIRST AND TWENTY SECOND OF ONE THOUSAND TWO HUNDRED FIFTY"),
        ("a 28.8 kilobit modem", "A TWENTY EIGHT POINT EIGHT KILOBIT MODEM"),
        ("50% & more", "FIFTY PERCENT AND MORE"),
        ("$3.50 or $1", "THREE DOLLARS FIFTY CENTS OR ONE DOLLAR"),
        ("3D audio at 7 A.M.", "THREE D AUDIO AT SEVEN A M"),
        ("press * or # then 1+1=2", "PRESS STAR OR POUND THEN ONE PLUS ONE EQUALS TWO"),
        ("Call-Forward on busy/idle", "CALL FORWARD ON BUSY IDLE"),
        ("café naïve", "CAFE NAIVE"),
        ("", ""),
    ],
)
def test_normalize_transcript(text: str, expected: str) -> None:
    assert normalize_transcript(text) == expected


def test_digit_sequences_and_acronyms() -> None:
    text = "dial 1234 or 500, not 12, on the PBX via SIP"
    assert normalize_transcript(text, spell_out={"PBX"}, digit_sequence_min_len=3) == (
        "DIAL ONE TWO THREE FOUR OR FIVE ZERO ZERO NOT TWELVE ON THE P B X VIA SIP"
    )
    # Thousands separators mean a quantity even in digit-sequence mode.
    assert normalize_transcript("1,500 users", digit_sequence_min_len=3) == "ONE THOUSAND FIVE HUNDRED USERS"


def test_normalized_alphabet_is_librispeech() -> None:
    out = normalize_transcript("Weird: ~^_\\ {x} <y> [z] ¿qué? 100 €5 ‘smart’ quotes")
    assert set(out) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
    assert "  " not in out and out == out.strip()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("at [@]", "AT"),
        ('IAX (note: does not say "2")', "I A X"),
        ("H.323", "H THREE TWO THREE"),
        ("exclaimation-point [!]", "EXCLAMATION POINT"),
        ("visit www.asterisk.org.", "VISIT W W W DOT ASTERISK DOT ORG"),
        ("fourtieth", "FORTIETH"),
        ("dial extension 8500 or 2", "DIAL EXTENSION EIGHT FIVE ZERO ZERO OR TWO"),
    ],
)
def test_prompt_fixes(raw: str, expected: str) -> None:
    assert normalize_prompt(raw) == expected


def test_parse_prompt_list_skips_are_counted() -> None:
    data = (
        "; comment\n\n"
        "hello: Hello there.\n"
        "silence/1: (1 second of silence)\n"
        "beep: [this is a simple beep tone]\n"
        "confbridge-join: <beep ascending>\n"
        "this line has no colon\n"
        "bad: \xff\n"
        "hello: duplicate\n"
    ).encode("latin-1")
    issues = IssueLog()
    prompts = parse_prompt_list(data, "list.txt", issues)
    assert prompts["hello"].text == "HELLO THERE" and prompts["hello"].skip_reason is None
    assert prompts["silence/1"].skip_reason == "silence"
    assert prompts["beep"].skip_reason == "non-speech"
    assert prompts["confbridge-join"].skip_reason == "non-speech"
    counts = issues.counts()
    assert counts[("malformed transcript line", "skipped")] == 1
    assert counts[("transcript not UTF-8", "skipped")] == 1
    assert counts[("duplicate transcript", "ignored")] == 1
    bad = next(i for i in issues.issues if i.category == "transcript not UTF-8")
    assert bad.path == "list.txt" and bad.line == 8
