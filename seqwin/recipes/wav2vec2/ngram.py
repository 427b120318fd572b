"""Word n-gram language models in ARPA format (interpolated Kneser-Ney), for CTC beam search with KenLM.

:func:`train_arpa` estimates an order-``n`` model from transcripts: the highest order uses counts, lower orders
Kneser-Ney continuation counts (how many distinct words precede an n-gram), each order discounted by ``D`` and
interpolated with the next lower one; unigrams are interpolated with a uniform distribution so every word of the
vocabulary (and ``<unk>``) has mass. The interpolated model is written in ARPA backoff form exactly (an n-gram
seen in training stores its interpolated probability, a context stores its interpolation weight as its backoff
weight), as SRILM writes interpolated models. Meant for in-domain transcripts (the mini corpus, LibriSpeech
training text); for LibriSpeech's 800M-word LM corpus use the official ``4-gram.arpa`` instead.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
Gram = tuple[str, ...]


def _counts(sentences: Iterable[list[str]], order: int) -> list[Counter[Gram]]:
    """``counts[k]``: order-(k+1) counts, Kneser-Ney continuation counts below the top order (except for
    n-grams starting with ``<s>``, which have no left context and keep their counts)."""
    raw: list[Counter[Gram]] = [Counter() for _ in range(order)]
    for words in sentences:
        tokens = [BOS, *words, EOS]
        for k in range(order):
            for i in range(len(tokens) - k):
                raw[k][tuple(tokens[i: i + k + 1])] += 1
    counts = [Counter() for _ in range(order)]
    counts[-1] = raw[-1]
    for k in range(order - 2, -1, -1):
        for gram in raw[k + 1]:
            counts[k][gram[1:]] += 1  # one more distinct left extension
        for gram, n in raw[k].items():
            if gram[0] == BOS:
                counts[k][gram] = n
    counts[0].pop((BOS,), None)
    return counts


def train_arpa(sentences: Iterable[list[str]], order: int = 3, discount: float = 0.75) -> str:
    if order < 1 or not 0.0 < discount < 1.0:
        raise ValueError(f"need order >= 1 and 0 < discount < 1, got {order}, {discount}")
    counts = _counts(list(sentences), order)
    vocab = sorted({g[0] for g in counts[0]} | {EOS, UNK})
    prob: list[dict[Gram, float]] = [{} for _ in range(order)]
    backoff: list[dict[Gram, float]] = [{} for _ in range(order)]
    total = sum(counts[0].values())
    uniform_mass = discount * len(counts[0]) / total if total else 1.0
    for word in vocab:
        seen = max(counts[0].get((word,), 0) - discount, 0.0) / total if total else 0.0
        prob[0][(word,)] = seen + uniform_mass / len(vocab)

    def lower(k: int, context: Gram, word: str) -> float:
        """p(word | context) of the order-(k+1) model: backing off multiplies by the contexts' weights."""
        weight = 1.0
        while k > 0 and context + (word,) not in prob[k]:
            weight *= backoff[k - 1].get(context, 1.0)
            k, context = k - 1, context[1:]
        if k == 0:
            return weight * prob[0].get((word,), prob[0][(UNK,)])
        return weight * prob[k][context + (word,)]

    for k in range(1, order):
        by_context: dict[Gram, list[tuple[str, int]]] = defaultdict(list)
        for gram, n in counts[k].items():
            by_context[gram[:-1]].append((gram[-1], n))
        for context, followers in by_context.items():
            c = sum(n for _, n in followers)
            gamma = discount * len(followers) / c
            backoff[k - 1][context] = gamma
            for word, n in followers:
                prob[k][context + (word,)] = (n - discount) / c + gamma * lower(k - 1, context[1:], word)
    lines = ["\\data\\"] + [f"ngram {k + 1}={len(prob[k]) + (k == 0)}" for k in range(order)]
    for k in range(order):
        lines += ["", f"\\{k + 1}-grams:"]
        if k == 0:  # <s> is only ever a context: probability 0 by ARPA convention (-99)
            lines.append(f"-99\t{BOS}\t{math.log10(backoff[0][(BOS,)]) if (BOS,) in backoff[0] else 0.0:.6f}")
        for gram in sorted(prob[k]):
            row = f"{math.log10(prob[k][gram]):.6f}\t{' '.join(gram)}"
            if k < order - 1 and gram in backoff[k]:
                row += f"\t{math.log10(backoff[k][gram]):.6f}"
            lines.append(row)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def write_arpa_from_text(texts: list[Path], out: Path, order: int = 3) -> Path:
    """An ARPA model of the word transcripts in ``texts`` (``.wrd`` or plain text, one sentence a line)."""
    sentences = [line.split() for path in texts for line in path.read_text(encoding="utf-8").splitlines()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(train_arpa([s for s in sentences if s], order), encoding="utf-8")
    return out


def arpa_vocabulary(arpa: Path) -> list[str]:
    words, in_unigrams = [], False
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams and line != "\\1-grams:":
                    break
                in_unigrams = line == "\\1-grams:"
                continue
            if in_unigrams and line:
                words.append(line.split()[1])
    return [w for w in words if w not in (BOS, EOS, UNK)]
