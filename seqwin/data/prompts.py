"""The Asterisk prompt list (``core-sounds-en.txt``) and how its lines become LibriSpeech-style transcripts.

Lines are ``name: Text.``; ``;`` starts a comment. Entries that are not speech are skipped with a reason:
``silence/*`` and texts that are wholly a ``[...]`` or ``<...>`` description (tones, beeps, monkeys). Inline
``[...]`` and ``(...)`` parts are annotations (``at [@]``, ``(note: does not say "2")``) and are removed.

How numbers and acronyms are read was checked against the recordings with an independent recognizer
(pocketsphinx): ``dial 500`` / ``extension 1234`` / ``H.323`` are read digit by digit, ``28.8`` as "twenty
eight point eight", ``PBX``/``IAX``/``MGCP``/``USB`` letter by letter, while ``SIP`` and ``DAHDI`` are words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from seqwin.data.errors import IssueLog
from seqwin.data.textnorm import normalize_transcript

SKIP_PREFIXES = ("silence/",)
SPELL_OUT = frozenset({"IAX", "IP", "IVR", "MGCP", "PBX", "USB"})
# Integers of 3+ digits in these prompts are extensions, PINs and protocol numbers, read digit by digit.
DIGIT_SEQUENCE_MIN_LEN = 3
# Spoken form where the written prompt differs: typos in the list, and a URL.
FIXES = {
    "www.asterisk.org": "W W W dot asterisk dot org",
    "exclaimation": "exclamation",
    "umute": "unmute",
    "Un-indentified": "unidentified",
    "witheld": "withheld",
    "fourtieth": "fortieth",
}
_LINE_RE = re.compile(r"^(?P<name>[^\s:]+):\s*(?P<text>.*)$")
_NON_SPEECH_RE = re.compile(r"^\s*(\[[^\]]*\]|<[^>]*>)\s*$")
_ANNOTATION_RE = re.compile(r"\[[^\]]*\]|\([^)]*\)")


@dataclass(frozen=True)
class Prompt:
    name: str
    raw: str
    text: str  # normalized; empty when skipped
    line: int
    skip_reason: str | None = None


def normalize_prompt(raw: str) -> str:
    text = _ANNOTATION_RE.sub(" ", raw)
    for wrong, right in FIXES.items():
        text = text.replace(wrong, right)
    return normalize_transcript(text, spell_out=SPELL_OUT, digit_sequence_min_len=DIGIT_SEQUENCE_MIN_LEN)


def parse_prompt_list(data: bytes, path: Path | str, issues: IssueLog) -> dict[str, Prompt]:
    """``name -> Prompt`` for every entry; malformed lines go to ``issues`` with their line number."""
    prompts: dict[str, Prompt] = {}
    for number, raw_line in enumerate(data.splitlines(), start=1):
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            issues.skip("transcript not UTF-8", path, f"{exc.reason} at byte {exc.start}", number)
            continue
        if not line or line.startswith(";"):
            continue
        m = _LINE_RE.match(line)
        if not m:
            issues.skip("malformed transcript line", path, line[:60], number)
            continue
        name, raw = m.group("name"), m.group("text").strip()
        if name in prompts:
            issues.note(
                "duplicate transcript",
                path,
                f"{name} (first on line {prompts[name].line})",
                "ignored",
                number,
            )
            continue
        reason = None
        if name.startswith(SKIP_PREFIXES):
            reason = "silence"
        elif _NON_SPEECH_RE.match(raw):
            reason = "non-speech"
        text = "" if reason else normalize_prompt(raw)
        if not reason and not text:
            reason = "empty transcript"
        prompts[name] = Prompt(name, raw, text, number, reason)
    return prompts
