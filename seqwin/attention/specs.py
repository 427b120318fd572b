"""Per-layer attention specs: plain config for choosing, layer by layer, how a model attends.

The Routing Transformer configurations mix heads inside a layer (e.g. 8 local-window heads + 8 routing heads)
and often route only in the top layers. :class:`AttentionSpec` is plain config (a dataclass of YAML-able
fields that fairseq2's value converter structures/unstructures) and :func:`expand_attention_specs` turns
"default + top layers + per-layer overrides" into one spec per layer, so a recipe chooses attention per layer.
The fairseq2 SDPA that runs a spec is :class:`seqwin.attention.fairseq2.RoutingSDPA`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

AttentionKind = Literal["full", "local", "routing", "mixed"]


@dataclass(kw_only=True)
class AttentionSpec:
    """How one layer attends. ``kind``: ``full`` (every head sees the whole sequence, or its past if causal),
    ``local`` (every head a sliding window), ``routing`` (every head routing), ``mixed`` (``local_heads``
    window heads followed by ``routing_heads`` routing heads; they must add up to the layer's heads)."""

    kind: AttentionKind = "full"
    causal: bool = False
    local_heads: int = 0
    window: tuple[int, int] = (-1, -1)
    """Local heads' ``(left, right)`` window (``sliding_window_attention``); ``right`` must be 0 if causal."""
    routing_heads: int = 0
    num_clusters: int = 16
    routing_window: int | None = None
    """Causal routing: keys of the own cluster a query sees, itself included (``None``: all earlier ones)."""
    group_size: int | None = None
    """Non-causal routing: tokens per balanced group (``None``: ``ceil(seq_len / num_clusters)``). Fix it to
    make a sequence's output independent of how much its batch is padded."""
    shared_qk: bool = False
    """Route tokens by their queries and treat keys as sharing that routing (q and k from one projection)."""
    decay: float = 0.999
    commitment: float = 1e-4

    def __post_init__(self) -> None:
        self.window = tuple(int(x) for x in self.window)  # YAML gives lists
        if self.kind not in ("full", "local", "routing", "mixed"):
            raise ValueError(f"kind must be full, local, routing or mixed, got {self.kind!r}")
        if len(self.window) != 2 or min(self.window) < -1:
            raise ValueError(f"window must be (left, right) with sides >= -1, got {self.window}")
        if self.causal and self.kind in ("local", "mixed") and self.window[1] != 0:
            raise ValueError(f"a causal spec needs a window with right == 0, got {self.window}")
        if self.kind in ("routing", "mixed") and self.num_clusters < 1:
            raise ValueError("routing heads need num_clusters >= 1")
        if self.kind == "mixed" and (self.local_heads < 0 or self.routing_heads < 1):
            raise ValueError("a mixed spec needs routing_heads >= 1 and local_heads >= 0")

    def head_split(self, num_heads: int) -> tuple[int, int]:
        """``(local_heads, routing_heads)`` for a layer with ``num_heads`` heads."""
        if self.kind in ("full", "local"):
            return num_heads, 0
        if self.kind == "routing":
            return 0, num_heads
        if self.local_heads + self.routing_heads != num_heads:
            raise ValueError(
                f"local_heads ({self.local_heads}) + routing_heads ({self.routing_heads}) must equal "
                f"the layer's {num_heads} heads"
            )
        return self.local_heads, self.routing_heads

    def local_window(self) -> tuple[int, int]:
        if self.kind == "full":
            return (-1, 0) if self.causal else (-1, -1)
        return self.window


def expand_attention_specs(
    num_layers: int,
    default: AttentionSpec,
    *,
    top: AttentionSpec | None = None,
    num_top_layers: int = 0,
    overrides: Mapping[int, AttentionSpec] | None = None,
) -> list[AttentionSpec]:
    """One spec per layer: ``default`` everywhere, ``top`` in the last ``num_top_layers`` layers (routing only
    in the top layers, as in the Routing Transformer), then per-layer ``overrides`` (negative indices count
    from the top)."""
    if not 0 <= num_top_layers <= num_layers:
        raise ValueError(f"num_top_layers must be in [0, {num_layers}], got {num_top_layers}")
    if num_top_layers and top is None:
        raise ValueError("num_top_layers > 0 needs a `top` spec")
    specs = [replace(default) for _ in range(num_layers)]
    for i in range(num_layers - num_top_layers, num_layers):
        specs[i] = replace(top)
    for i, spec in (overrides or {}).items():
        if not -num_layers <= i < num_layers:
            raise ValueError(f"override index {i} out of range for {num_layers} layers")
        specs[i] = replace(spec)
    return specs


@dataclass(kw_only=True)
class LayerAttentionConfig:
    """Example recipe section: the default spec, the top layers' spec and their count, per-layer overrides."""

    default: AttentionSpec = field(
        default_factory=lambda: AttentionSpec(kind="local", window=(256, 0), causal=True)
    )
    top: AttentionSpec | None = None
    num_top_layers: int = 0
    overrides: dict[int, AttentionSpec] = field(default_factory=dict)

    def expand(self, num_layers: int) -> list[AttentionSpec]:
        return expand_attention_specs(
            num_layers,
            self.default,
            top=self.top,
            num_top_layers=self.num_top_layers,
            overrides=self.overrides,
        )
