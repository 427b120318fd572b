"""WindowKV: compress the KV cache of full-attention layers after prefill by keeping the best token windows.

At the end of prefill, the last ``obs_window`` queries of the prompt (the observation window) attend to the whole
prompt; the attention mass each key receives, summed over those queries and over the query heads that share the
key/value head, scores the key. The prompt before the observation window is cut into windows of ``window_size``
consecutive tokens (from position 0; the remainder joins the always-kept recent part), a window's score is the
sum of its tokens' scores, and each key/value head keeps its top windows within a budget of ``budget * prompt_len``
tokens, plus the recent part. Keeping whole windows rather than single tokens keeps local context intact (WindowKV,
Zuo et al. 2025, after SnapKV's observation-window scoring).

Layer groups: consecutive full-attention layers (counted among the full layers only, from the bottom) form groups
of ``share_layers``; the first layer of a group scores and selects, the others reuse its positions, which saves the
scoring work. ``budget`` is one fraction for every group or one per group (WindowKV allocates budgets per group,
usually more to the lower layers); a group with budget 1.0 is left uncompressed.

The kept count is the same for all heads and layers of a group, so caches stay rectangular; groups may differ.

:class:`seqwin.attention.fairseq2.WindowKV` applies this to a fairseq2 model's KV caches. :func:`windowkv_reference`
is a direct per-head loop used by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def budget_list(budget: float | Sequence[float]) -> list[float]:
    """A WindowKV budget (one fraction, or one per layer group) as a list."""
    return list(budget) if isinstance(budget, (list, tuple)) else [budget]


@dataclass(kw_only=True)
class WindowKVConfig:
    budget: float | list[float] = 0.12
    """Fraction of the prompt's keys kept per full-attention layer (1.0: no compression): one for all layer groups,
    or a list with one per group of ``share_layers`` full layers, bottom group first."""
    window_size: int = 8
    obs_window: int = 32
    share_layers: int = 8
    """Consecutive full-attention layers that share one selection (and one budget)."""

    def budgets(self) -> list[float]:
        """The budget as given: one value (for all groups) or one per group."""
        return budget_list(self.budget)

    def validate(self) -> None:
        budgets = self.budgets()
        if not budgets:
            raise ValueError("budget needs at least one fraction")
        bad = [b for b in budgets if not 0.0 < b <= 1.0]
        if bad:
            raise ValueError(f"budgets must be in (0, 1], got {bad[0]}")
        if self.window_size < 1 or self.obs_window < 1 or self.share_layers < 1:
            raise ValueError("window_size, obs_window and share_layers must be >= 1")

    def num_groups(self, num_layers: int) -> int:
        return math.ceil(num_layers / self.share_layers)

    def group_budgets(self, num_layers: int) -> list[float]:
        """Budget of each layer group for ``num_layers`` full-attention layers (a per-group list must match)."""
        budgets, groups = self.budgets(), self.num_groups(num_layers)
        if len(budgets) == 1 and not isinstance(self.budget, (list, tuple)):
            return budgets * groups
        if len(budgets) != groups:
            raise ValueError(f"{len(budgets)} budgets given, but {num_layers} full-attention layers in groups of "
                             f"{self.share_layers} make {groups} group{'s' if groups != 1 else ''}")
        return budgets

    @property
    def compresses(self) -> bool:
        return any(b < 1.0 for b in self.budgets())


def observation_scores(q_obs: Tensor, k: Tensor, *, scale: float | None = None) -> Tensor:
    """Attention mass per key ``(batch, kv_heads, seq)`` from the observation queries ``q_obs``
    ``(batch, obs, heads, dim)``, which sit at the last ``obs`` positions of ``k`` ``(batch, seq, kv_heads, dim)``
    (causal: an observation query sees keys up to its own position)."""
    b, w, h, d = q_obs.shape
    n, hk = k.shape[1], k.shape[2]
    if w > n or h % hk:
        raise ValueError(f"bad shapes: q_obs {tuple(q_obs.shape)}, k {tuple(k.shape)}")
    scale = d**-0.5 if scale is None else scale
    qg = q_obs.float().view(b, w, hk, h // hk, d)
    logits = torch.einsum("bwgqd,bngd->bgqwn", qg, k.float()) * scale  # (b, hk, group, w, n)
    pos = torch.arange(n, device=k.device)
    q_pos = torch.arange(n - w, n, device=k.device)
    logits = logits.masked_fill(pos[None, :] > q_pos[:, None], float("-inf"))
    return logits.softmax(-1).sum(dim=(2, 3))


def _single_budget(config: WindowKVConfig, budget: float | None) -> float:
    if budget is not None:
        return budget
    if isinstance(config.budget, (list, tuple)):
        raise ValueError("per-group budgets: pass the group's budget")
    return config.budget


def kept_counts(seq_len: int, config: WindowKVConfig, budget: float | None = None) -> tuple[int, int]:
    """``(recent, num_windows)``: tokens always kept at the end and windows selected before them, for ``budget``
    (default: the config's single budget)."""
    obs = min(config.obs_window, seq_len)
    recent = obs + (seq_len - obs) % config.window_size
    candidates = (seq_len - recent) // config.window_size
    # Rounded before the ceiling: 0.14 * 100 is 14.000000000000002 in floating point, which would allow a 15th token.
    kept = math.ceil(round(_single_budget(config, budget) * seq_len, 6))
    return recent, max(0, min(candidates, (kept - recent) // config.window_size))


def select_windows(scores: Tensor, config: WindowKVConfig, budget: float | None = None) -> Tensor:
    """Sorted kept positions ``(batch, kv_heads, kept)`` from per-key scores ``(batch, kv_heads, seq)``."""
    b, hk, n = scores.shape
    recent, num_windows = kept_counts(n, config, budget)
    w = config.window_size
    cand = (n - recent) // w
    recent_pos = torch.arange(n - recent, n, device=scores.device).expand(b, hk, recent)
    if num_windows == 0:
        return recent_pos
    window_scores = scores[..., : cand * w].reshape(b, hk, cand, w).sum(-1)
    top = window_scores.topk(num_windows, dim=-1).indices.sort(-1).values  # (b, hk, num_windows)
    pos = (top[..., None] * w + torch.arange(w, device=scores.device)).flatten(-2)
    return torch.cat([pos, recent_pos], dim=-1)


def gather_kv(k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Keep ``positions`` ``(batch, kv_heads, kept)`` of ``k``/``v`` ``(batch, seq, kv_heads, dim)``."""
    idx = positions.transpose(1, 2)[..., None]  # (b, kept, hk, 1)
    return k.gather(1, idx.expand(-1, -1, -1, k.shape[-1])), v.gather(1, idx.expand(-1, -1, -1, v.shape[-1]))


def windowkv_reference(q_obs: Tensor, k: Tensor, config: WindowKVConfig,
                       budget: float | None = None) -> list[list[list[int]]]:
    """Per (batch, kv head) kept positions, by plain loops over windows (the tests' reference)."""
    b, w, h, d = q_obs.shape
    n, hk = k.shape[1], k.shape[2]
    recent, num_windows = kept_counts(n, config, budget)
    out = []
    for bi in range(b):
        rows = []
        for g in range(hk):
            score = torch.zeros(n, dtype=torch.float64)
            for head in range(g * (h // hk), (g + 1) * (h // hk)):
                for i in range(w):
                    t = n - w + i
                    att = (k[bi, : t + 1, g].double() @ q_obs[bi, i, head].double()) * d**-0.5
                    score[: t + 1] += att.softmax(0)
            windows = [(float(score[s : s + config.window_size].sum()), s)
                       for s in range(0, n - recent, config.window_size)]
            best = sorted(s for _, s in sorted(windows, reverse=True)[:num_windows])
            rows.append([p for s in best for p in range(s, s + config.window_size)] + list(range(n - recent, n)))
        out.append(rows)
    return out
