"""Gumbel-softmax vector quantizer without ``torch.compile``.

fairseq2 0.8.1's ``GumbelWav2Vec2VectorQuantizer.forward`` wraps its codebook sum in ``@torch.compile`` defined
inside ``forward``, with the batch shape captured in the closure: every new (batch, length) shape recompiles with
Inductor (tens of seconds on a CPU, then a fallback once the recompile limit is hit). Speech batches change shape
every step. This module computes the same thing -- same parameters and buffer names, so state dicts are
interchangeable -- with one ``einsum`` (a one-hot times the codebooks is a matmul).
"""

from __future__ import annotations

import torch
from fairseq2.models.wav2vec2 import Wav2Vec2VectorQuantizer, Wav2Vec2VectorQuantizerOutput
from fairseq2.nn import Linear
from torch import Tensor, nn
from torch.nn.functional import gumbel_softmax


def _init_entry_projection(proj: Linear) -> None:
    nn.init.normal_(proj.weight, mean=0.0, std=1.0)
    nn.init.zeros_(proj.bias)


class EagerGumbelQuantizer(Wav2Vec2VectorQuantizer):
    def __init__(self, input_dim: int, output_dim: int, num_codebooks: int, num_codebook_entries: int,
                 codebook_sampling_temperature: tuple[float, float, float]) -> None:
        super().__init__(input_dim, output_dim, num_codebooks, num_codebook_entries, codebook_sampling_temperature)
        if output_dim % num_codebooks:
            raise ValueError(f"quantized_dim ({output_dim}) must be a multiple of num_codebooks ({num_codebooks})")
        total = num_codebooks * num_codebook_entries
        self.entry_proj = Linear(input_dim, total, bias=True, init_fn=_init_entry_projection)
        self.entries = nn.Parameter(torch.empty(1, total, output_dim // num_codebooks))
        self.num_updates: Tensor
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        nn.init.uniform_(self.entries)

    def _temperature(self) -> float:
        max_temp, min_temp, decay = self.codebook_sampling_temperature
        temp = max_temp * decay ** int(self.num_updates)
        if self.training:
            self.num_updates.add_(1)
        return max(temp, min_temp)

    def forward(self, x: Tensor) -> Wav2Vec2VectorQuantizerOutput:
        temp = self._temperature()
        batch, seq_len, _ = x.shape
        groups, entries = self.num_codebooks, self.num_codebook_entries
        # (N, S, E) -> (N x S x G, V)
        logits = self.entry_proj(x).view(batch * seq_len * groups, entries)
        hard = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        hard = hard.view(batch * seq_len, groups, entries)
        hard_probs = hard.float().mean(0)
        code_perplexity = torch.exp(-(hard_probs * torch.log(hard_probs + 1e-7)).sum(-1)).sum()
        avg_probs = torch.softmax(logits.view(batch * seq_len, groups, entries).float(), -1).mean(0)
        prob_perplexity = torch.exp(-(avg_probs * torch.log(avg_probs + 1e-7)).sum(-1)).sum()
        if self.training:
            onehot = gumbel_softmax(logits.float(), tau=temp, hard=True).type_as(logits)
        else:
            onehot = hard
        onehot = onehot.reshape(batch * seq_len, groups, entries)
        # (N x S, G, V) x (G, V, D) -> (N x S, G, D) -> (N, S, G x D)
        codebooks = self.entries.view(groups, entries, -1)
        quantized = torch.einsum("ngv,gvd->ngd", onehot, codebooks).reshape(batch, seq_len, -1)
        return Wav2Vec2VectorQuantizerOutput(quantized, onehot.view(batch * seq_len, -1), code_perplexity,
                                             prob_perplexity, temp)

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, output_dim={self.output_dim}, num_codebooks={self.num_codebooks}, "
                f"num_codebook_entries={self.num_codebook_entries}, "
                f"codebook_sampling_temperature={self.codebook_sampling_temperature}")
