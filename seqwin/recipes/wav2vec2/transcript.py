"""CTC decoding of logits that arrive a chunk at a time, with word times, and the transcript formats.

Word times come from frames: frame ``t`` starts at ``t * frame_seconds``.
- greedy (best path): a word starts at the first frame of its first letter and ends after the last frame of its
  last letter (repeated frames of a letter included);
- beam search + word LM: torchaudio's decoder gives the frame where each letter is emitted; a word starts at its
  first letter's frame and ends one frame after its last letter's (a word its path does not spell, which seqwin's
  lexicon, each word's letters then ``|``, does not produce, would get a zero-length time after the previous word).
Both are exactly what decoding the whole file at once gives: greedy decisions are per frame, and the beam decoder
steps through frames the same way whether fed once or chunk by chunk.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from seqwin.data.manifest import WORD_BOUNDARY
from seqwin.recipes.wav2vec2.decode import SPECIAL_IDS, ids_to_words


@dataclass
class Word:
    word: str
    start: float
    end: float


def group_words(letters: list[tuple[int, int, int]], symbols: list[str], frame_seconds: float) -> list[Word]:
    """``(letter id, first frame, end frame)`` in order -> words split at the word boundary symbol."""
    words: list[Word] = []
    current: list[tuple[int, int, int]] = []
    for item in [*letters, (-1, 0, 0)]:  # a final boundary flushes the last word
        if item[0] >= 0 and symbols[item[0]] != WORD_BOUNDARY:
            current.append(item)
            continue
        text = "".join(symbols[i] for i, _, _ in current).strip()
        if text:
            words.append(Word(text, round(current[0][1] * frame_seconds, 3), round(current[-1][2] * frame_seconds, 3)))
        current = []
    return words


class GreedyStream:
    """Best-path decoding: argmax per frame, repeats merged, blanks and special symbols dropped."""

    decoding = "greedy"
    timing = "greedy CTC path"

    def __init__(self, symbols: list[str], frame_seconds: float) -> None:
        self.symbols, self.frame_seconds = symbols, frame_seconds
        self.frames = 0
        self.previous = -1
        self.letters = array("q")  # id, first frame, end frame per letter: 24 bytes each, for hour-long files

    def step(self, logits: Tensor) -> None:
        for t, i in enumerate(logits.argmax(-1).tolist(), start=self.frames):
            if i == self.previous and self.letters and self.letters[-1] == t:
                self.letters[-1] = t + 1
            elif i not in SPECIAL_IDS and i < len(self.symbols):
                self.letters.extend((i, t, t + 1))
            self.previous = i
        self.frames += logits.shape[0]

    def partial(self) -> str:
        return ids_to_words(self.letters[0::3], self.symbols)

    def finish(self) -> tuple[str, list[Word]]:
        letters = list(zip(self.letters[0::3], self.letters[1::3], self.letters[2::3], strict=True))
        return self.partial(), group_words(letters, self.symbols, self.frame_seconds)


class BeamStream:
    """Lexicon beam search with a word LM (:func:`seqwin.recipes.wav2vec2.beam.lexicon_decoder`), stepped chunk by
    chunk. Its lattice of hypotheses grows with the file (the encoder's memory does not)."""

    decoding = "beam search + word LM"
    timing = "beam decoder letter frames"

    def __init__(self, decoder, symbols: list[str], frame_seconds: float) -> None:
        self.decoder, self.symbols, self.frame_seconds = decoder, symbols, frame_seconds
        decoder.decode_begin()

    def step(self, logits: Tensor) -> None:
        self.decoder.decode_step(torch.log_softmax(logits.float(), dim=-1).contiguous())

    def partial(self) -> str:
        best = self.decoder.decoder.get_best_hypothesis(0)  # the words of the best hypothesis so far
        return " ".join(w for w in (self.decoder.word_dict.get_entry(x) for x in best.words if x >= 0) if w)

    def finish(self) -> tuple[str, list[Word]]:
        self.decoder.decode_end()
        hyps = self.decoder.get_final_hypothesis()
        if not hyps:
            return "", []
        hyp = hyps[0]
        # flashlight's path starts with one extra (silence) step: timestep k is frame k - 1
        letters = [(int(i), int(t) - 1, int(t)) for i, t in zip(hyp.tokens, hyp.timesteps, strict=True)]
        # The path can end in letters of a word the lexicon never completed: match the emitted words in order.
        spelled = iter(group_words(letters, self.symbols, self.frame_seconds))
        words: list[Word] = []
        for text in (w for w in hyp.words if w):
            end = words[-1].end if words else 0.0
            words.append(next((w for w in spelled if w.word == text), Word(text, end, end)))
        return " ".join(w.word for w in words), words


# ---- formats -----------------------------------------------------------------------------------------------


@dataclass
class Transcript:
    id: str
    source: str
    duration: float
    text: str
    words: list[Word]

    def json_line(self, extra: dict | None = None) -> str:
        record = {"id": self.id, "source": self.source, "duration": round(self.duration, 3), "text": self.text,
                  "words": [asdict(w) for w in self.words], **(extra or {})}
        return json.dumps(record, ensure_ascii=False)

    def srt(self, max_words: int = 8, max_seconds: float = 5.0) -> str:
        """SubRip cues of up to ``max_words`` words spanning at most ``max_seconds`` (one word may exceed it)."""
        cues: list[list[Word]] = []
        for word in self.words:
            if cues and len(cues[-1]) < max_words and word.end - cues[-1][0].start <= max_seconds:
                cues[-1].append(word)
            else:
                cues.append([word])
        return "".join(f"{n}\n{srt_time(c[0].start)} --> {srt_time(c[-1].end)}\n{' '.join(w.word for w in c)}\n\n"
                       for n, c in enumerate(cues, start=1))


def srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
