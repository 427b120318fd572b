"""Scoring token streams with an LM: log-likelihood at a given context length, and WindowKV's loss vs budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import groupby

import numpy as np
import torch
import torch.nn.functional as F
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import BatchLayout

from seqwin.attention.windowkv import WindowKVConfig, budget_list
from seqwin.models.lm.decoding import Decoder, attention_layers, decoding_session
from seqwin.recipes.lm.data import eval_windows


@torch.no_grad()
def score_stream(model: TransformerLM, tokens: np.ndarray, *, context: int, stride: int,
                 batch_size: int = 1) -> tuple[float, int]:
    """``(summed negative log-likelihood in nats, scored tokens)`` of every token after the first, each seen with
    up to ``context`` tokens of history (windows advance by ``stride``; see ``eval_windows``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    nll, count = 0.0, 0
    windows = list(eval_windows(len(data), context, stride))
    # Windows of one shape batch together (all but the first and last usually are).
    for _, group in groupby(windows, key=lambda w: (w[1] - w[0], w[2])):
        group = list(group)
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            scored = chunk[0][2]
            inputs = torch.stack([data[b:e] for b, e, _ in chunk]).to(device)
            targets = torch.stack([data[b + 1 : e + 1] for b, e, _ in chunk])[:, -scored:].to(device)
            logits = model(inputs, BatchLayout.of(inputs))[:, -scored:]
            nll += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    model.train(was_training)
    return nll, count


@dataclass
class BudgetRow:
    budget: float | list[float]
    """One fraction for every layer group, or one per group."""
    kept: list[int]
    """Prompt keys kept per layer group (bottom group first)."""
    kept_fraction: float
    """Kept share of the prompt's keys over all full-attention layers (what the cache actually holds)."""
    loss: float

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)

    @property
    def budgets(self) -> list[float]:
        return budget_list(self.budget)

    @property
    def is_full(self) -> bool:
        return all(b >= 1.0 for b in self.budgets)

    @property
    def label(self) -> str:
        return "/".join(f"{b:.0%}" for b in self.budgets)


@torch.no_grad()
def windowkv_loss_table(model: TransformerLM, tokens: np.ndarray, budgets: list[float | list[float]], *,
                        prompt_len: int, continuation_len: int, num_prompts: int,
                        config: WindowKVConfig) -> list[BudgetRow]:
    """Held-out next-token loss on ``continuation_len`` tokens after ``prompt_len``-token prompts whose full-layer
    caches WindowKV compressed to each budget (one fraction, or one per layer group of ``config.share_layers``;
    prompts evenly spaced over ``tokens``, decoded as one batch)."""
    span = prompt_len + continuation_len + 1
    if len(tokens) < span:
        raise ValueError(f"need {span} tokens for one prompt + continuation, the split has {len(tokens)}")
    starts = np.linspace(0, len(tokens) - span, num_prompts).astype(np.int64)
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.stack([tokens[s : s + span] for s in starts]).astype(np.int64)).to(device)
    prompt, cont = batch[:, :prompt_len], batch[:, prompt_len:-1]
    targets = batch[:, prompt_len:]
    num_full = sum(kind == "full" for kind, _ in attention_layers(model))
    rows = []
    with decoding_session(model):
        for budget in budgets:
            dec = Decoder(model, prompt_len + continuation_len, replace(config, budget=budget))
            first = dec.forward(prompt)[:, -1:]
            logits = torch.cat([first, dec.forward(cont)], dim=1)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).item()
            kept = dec.kept or [prompt_len] * config.num_groups(num_full)  # empty: nothing was compressed
            per_layer = [kept[i // config.share_layers] for i in range(num_full)]
            fraction = sum(per_layer) / (prompt_len * num_full) if num_full else 1.0
            rows.append(BudgetRow(budget, kept, fraction, loss))
    return rows
