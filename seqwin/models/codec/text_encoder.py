"""A contextual text encoder trained here: one of our own language models (``seqwin train lm``).

:class:`LMTextEncoder` reads a transcript once with the LM and returns one vector per word: the hidden states
averaged over the decoder layers (as :class:`~seqwin.models.codec.teachers.SemanticTeacher` averages wav2vec2
layers), then averaged over the word's subword tokens. A word's vector depends on the words before it (the LM is
causal), which is what makes the contextual teacher contextual, unlike the hashed n-gram encoder.

The LM width is mapped to the codec's ``teacher_dim`` (shared with the semantic teacher) by a fixed, seeded random
matrix with orthonormal rows when ``teacher_dim >= width`` (an isometry: norms and cosines are kept exactly) and
orthonormal columns otherwise (a random orthogonal projection: cosines kept approximately).
"""

from __future__ import annotations

import torch
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import BatchLayout
from torch import Tensor

from seqwin.models.codec.teachers import fingerprint, layer_average
from seqwin.models.lm.tokenizer import Tokenizer


def orthonormal_projection(rows: int, cols: int, seed: int) -> Tensor:
    """A ``(rows, cols)`` matrix with orthonormal rows (``rows <= cols``) or columns (``rows > cols``), drawn
    uniformly (QR of a seeded Gaussian with the signs of R's diagonal fixed, so the draw is unique)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return (q if rows > cols else q.T).float()


class LMTextEncoder:
    """A :class:`~seqwin.models.codec.teachers.TextEncoder` from a trained text LM and its tokenizer.

    ``encode(words)`` joins the words with spaces, as the LM read text in training: the tokenizer encodes word by
    word (the pieces of a SentencePiece word carry its leading space; a byte tokenizer gets the space byte between
    words), which gives exactly the ids of the joined text and tells which ids belong to which word.
    """

    def __init__(self, model: TransformerLM, tokenizer: Tokenizer, dim: int, *, seed: int = 0) -> None:
        if tokenizer.kind == "codes":
            raise ValueError("the LM models speech codes, not text")
        self.model, self.tokenizer, self.dim = model.eval(), tokenizer, dim
        self.device = next(model.parameters()).device
        self.width = int(model.model_dim)
        self.projection = orthonormal_projection(self.width, dim, seed).to(self.device)
        # Space-separated words: SentencePiece pieces start with the word's space, bytes need it in between.
        self._separator = [] if tokenizer.kind == "sentencepiece" else tokenizer.encode(" ")
        # The transcript is read as a line of its own, after a newline (`seqwin generate`'s default prompt), so
        # that its first word too has a context, as the first word of a line had in training.
        self._start = tokenizer.encode("\n")
        self.name = f"lm-{fingerprint(model)}-d{dim}-s{seed}"

    def token_ids(self, words: list[str]) -> tuple[list[int], list[int]]:
        """Ids of ``" ".join(words)`` and, for each id, the index of its word (-1: a separator)."""
        ids: list[int] = []
        owner: list[int] = []
        for i, word in enumerate(words):
            if word.split() != [word]:
                raise ValueError(f"word {i} ({word!r}): words must be non-empty and without whitespace")
            pieces = self.tokenizer.encode(word)
            sep = self._separator if i else []
            ids += sep + pieces
            owner += [-1] * len(sep) + [i] * len(pieces)
        return ids, owner

    @torch.no_grad()  # not inference_mode: the features are later used (and cached) as ordinary tensors
    def encode(self, words: list[str]) -> Tensor:
        """``(len(words), dim)``: per word, the mean over its tokens of the layer-averaged LM hidden states."""
        if not words:
            return torch.zeros(0, self.dim)
        ids, owner = self.token_ids(words)
        x = torch.tensor([self._start + ids], device=self.device)
        if x.shape[1] > self.model.max_seq_len:
            raise ValueError(f"{len(words)} words are {x.shape[1]} tokens, more than the LM's max_seq_len "
                             f"({self.model.max_seq_len})")
        seqs, layout = self.model.decoder_frontend(x, BatchLayout.of(x))
        hidden = layer_average(self.model.decoder, seqs, layout)[0, len(self._start):].float()
        word_of = torch.tensor(owner, device=self.device)
        in_word = word_of >= 0
        sums = hidden.new_zeros(len(words), self.width).index_add_(0, word_of[in_word], hidden[in_word])
        counts = torch.bincount(word_of[in_word], minlength=len(words)).unsqueeze(1)
        return (sums / counts @ self.projection).cpu()
