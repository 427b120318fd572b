"""Per-layer attention specs: the one config vocabulary every seqwin model uses to choose how each layer attends.

The Routing Transformer configurations mix heads inside a layer (e.g. 8 local-window heads + 8 routing heads)
and often route only in the top layers; local+global designs (HiLo, GC ViT) pair window heads with heads that see a
pooled summary of the whole sequence; multi-scale encoders give each head its own window. :class:`AttentionSpec`
is plain config (a dataclass of YAML-able fields that fairseq2's value converter structures/unstructures);
:class:`LayerAttentionConfig` is the ``attention:`` section of a model config ("default + top layers + per-layer
overrides + per-head windows") and :meth:`LayerAttentionConfig.expand` turns it into one :class:`LayerAttention`
per layer, with every check that needs the layer and head counts. Error messages name the offending field relative
to the section (``top: ...``, ``head_windows[2]: ...``); the owning config prefixes its own key.

The fairseq2 SDPA of a layer is :func:`seqwin.attention.fairseq2.make_sdpa`. This module imports neither torch
nor fairseq2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

AttentionKind = Literal["full", "local", "pooled", "routing", "mixed"]
Window = tuple[int, int]


@dataclass(kw_only=True)
class AttentionSpec:
    """How one layer attends. ``kind``: ``full`` (every head sees the whole sequence, or its past if causal),
    ``local`` (every head a sliding window), ``pooled`` (every head sees the means of blocks of ``pool_size``
    keys: all of them, or if causal the blocks that end before the query's own block starts), ``routing`` (every
    head routing), ``mixed`` (``local_heads`` window heads, then ``pooled_heads`` pooled heads that also see their
    ``window`` of raw keys, then ``routing_heads`` routing heads; they must add up to the layer's heads)."""

    kind: AttentionKind = "full"
    causal: bool = False
    local_heads: int = 0
    window: tuple[int, int] = (-1, -1)
    """``(left, right)`` window of the local heads (``sliding_window_attention``) and of the raw keys that the pooled
    heads of a ``mixed`` spec see; ``right`` must be 0 if causal."""
    pooled_heads: int = 0
    pool_size: int = 32
    """Keys per pooled block (``pooled`` layers and the pooled heads of ``mixed`` ones)."""
    routing_heads: int = 0
    num_clusters: int = 16
    routing_window: int | None = None
    """Causal routing: keys of the own cluster a query sees, itself included (``None``: all earlier ones)."""
    group_size: int | None = None
    """Non-causal routing: tokens per balanced group (``None``: ``ceil(seq_len / num_clusters)``). Fix it to
    make a sequence's output independent of how much its batch is padded."""
    shared_qk: bool = False
    """Routing heads use their queries as keys (the Routing Transformer's shared QK): a token is routed by its query,
    and the keys a query matches best are the tokens routed with it."""
    decay: float = 0.999
    commitment: float = 1e-4

    def __post_init__(self) -> None:
        self.window = tuple(int(x) for x in self.window)  # YAML gives lists
        if self.kind not in ("full", "local", "pooled", "routing", "mixed"):
            raise ValueError(f"kind must be full, local, pooled, routing or mixed, got {self.kind!r}")
        if len(self.window) != 2 or min(self.window) < -1:
            raise ValueError(f"window must be (left, right) with sides >= -1, got {self.window}")
        if self.causal and self.kind in ("local", "mixed") and self.window[1] != 0:
            raise ValueError(f"a causal spec needs a window with right == 0, got {self.window}")
        if self.kind in ("routing", "mixed") and self.num_clusters < 1:
            raise ValueError("routing heads need num_clusters >= 1")
        if self.kind == "mixed" and (min(self.local_heads, self.pooled_heads, self.routing_heads) < 0
                                     or self.pooled_heads + self.routing_heads < 1):
            raise ValueError("a mixed spec needs pooled_heads + routing_heads >= 1 and no negative head count")
        if self.uses_pooling() and self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")

    def uses_pooling(self) -> bool:
        return self.kind == "pooled" or (self.kind == "mixed" and self.pooled_heads > 0)

    def uses_routing(self) -> bool:
        return self.kind == "routing" or (self.kind == "mixed" and self.routing_heads > 0)

    def head_split(self, num_heads: int) -> tuple[int, int, int]:
        """``(local_heads, pooled_heads, routing_heads)`` for a layer with ``num_heads`` heads, in head order."""
        if self.kind in ("full", "local"):
            return num_heads, 0, 0
        if self.kind == "pooled":
            return 0, num_heads, 0
        if self.kind == "routing":
            return 0, 0, num_heads
        if self.local_heads + self.pooled_heads + self.routing_heads != num_heads:
            counts = [("local_heads", self.local_heads), ("pooled_heads", self.pooled_heads),
                      ("routing_heads", self.routing_heads)]
            named = " + ".join(f"{name} ({n})" for name, n in counts if n or name == "local_heads")
            raise ValueError(f"{named} must equal the layer's {num_heads} heads")
        return self.local_heads, self.pooled_heads, self.routing_heads

    def local_window(self) -> tuple[int, int]:
        if self.kind == "full":
            return (-1, 0) if self.causal else (-1, -1)
        return self.window

    def describe(self) -> str:
        """Short summary, e.g. ``local(32,32)`` or ``mixed(2x(255,0)+2xpooled(64))``."""
        if self.kind == "full":
            return "full"
        if self.kind == "local":
            return f"local({self.window[0]},{self.window[1]})"
        if self.kind == "pooled":
            return f"pooled({self.pool_size})"
        if self.kind == "routing":
            return f"routing(c={self.num_clusters})"
        groups = [(self.local_heads, f"({self.window[0]},{self.window[1]})"),
                  (self.pooled_heads, f"pooled({self.pool_size})"), (self.routing_heads, "routing")]
        return "mixed(" + "+".join(f"{n}x{what}" for n, what in groups if n) + ")"


def _named_specs(
    num_layers: int,
    default: AttentionSpec,
    top: AttentionSpec | None,
    num_top_layers: int,
    overrides: Mapping[int, AttentionSpec],
) -> list[tuple[str, AttentionSpec]]:
    """``(field, spec)`` per layer, the field naming where the layer's spec was configured."""
    if not 0 <= num_top_layers <= num_layers:
        raise ValueError(f"num_top_layers must be in [0, {num_layers}], got {num_top_layers}")
    if num_top_layers and top is None:
        raise ValueError("num_top_layers > 0 needs a `top` spec")
    named = [("default", default)] * num_layers
    for i in range(num_layers - num_top_layers, num_layers):
        named[i] = ("top", top)
    for i, spec in overrides.items():
        if not -num_layers <= i < num_layers:
            raise ValueError(f"overrides.{i}: layer index out of range for {num_layers} layers")
        named[i] = (f"overrides.{i}", spec)
    return named


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
    return [replace(spec) for _, spec in _named_specs(num_layers, default, top, num_top_layers, overrides or {})]


@dataclass(frozen=True)
class LayerAttention:
    """How one layer attends: its spec and, for a ``local`` layer, optionally one window per head."""

    spec: AttentionSpec
    head_windows: list[Window] | None = None
    source: str = field(default="default", compare=False)
    """The config field this layer's attention came from (``top``, ``overrides.3``, ...), for error messages."""

    def windows(self) -> Window | list[Window]:
        """The local window, or the per-head windows (what a sliding-window SDPA takes)."""
        return self.head_windows or self.spec.window

    def max_look_back(self) -> int:
        """Keys before the query that some local head sees (-1: unbounded)."""
        lefts = [w[0] for w in self.head_windows] if self.head_windows else [self.spec.window[0]]
        return -1 if -1 in lefts else max(lefts)

    def describe(self) -> str:
        if self.head_windows:
            return "local[" + ",".join(f"({a},{b})" for a, b in self.head_windows) + "]"
        return self.spec.describe()


@dataclass(kw_only=True)
class LayerAttentionConfig:
    """The ``attention:`` section of a model config: ``default`` everywhere, ``top`` in the last ``num_top_layers``
    layers, then per-layer ``overrides`` (negative indices count from the top); ``head_windows`` gives a layer (by
    index) one ``(left, right)`` window per head, and that layer's spec must be ``local``."""

    default: AttentionSpec = field(default_factory=AttentionSpec)
    top: AttentionSpec | None = None
    num_top_layers: int = 0
    overrides: dict[int, AttentionSpec] = field(default_factory=dict)
    head_windows: dict[int, list[Window]] = field(default_factory=dict)

    def expand(self, num_layers: int, num_heads: int, *, causal: bool = False) -> list[LayerAttention]:
        """One :class:`LayerAttention` per layer, after every check that needs the layer and head counts.

        ``causal``: the model is a decoder, so every spec is made causal (a local window, and each per-head
        window, must then have ``right == 0``)."""
        named = _named_specs(num_layers, self.default, self.top, self.num_top_layers, self.overrides)
        layers = []
        for name, spec in named:
            if causal and not spec.causal:
                try:
                    spec = replace(spec, causal=True)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
            try:
                spec.head_split(num_heads)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            layers.append(LayerAttention(replace(spec), source=name))
        for index, windows in self.head_windows.items():
            key = f"head_windows[{index}]"
            if not -num_layers <= index < num_layers:
                raise ValueError(f"{key}: layer index out of range for {num_layers} layers")
            if len(windows) != num_heads:
                raise ValueError(f"{key}: {len(windows)} windows for {num_heads} heads")
            per_head = [tuple(int(x) for x in w) for w in windows]  # YAML gives lists
            if any(len(w) != 2 or min(w) < -1 for w in per_head):
                raise ValueError(f"{key}: windows must be (left, right) with sides >= -1 (-1: unbounded), "
                                 f"got {windows}")
            layer = layers[index]
            if layer.spec.kind != "local":
                raise ValueError(f"{key}: layer {index % num_layers} is {layer.spec.kind!r} ({layer.source}), "
                                 "per-head windows need 'local'")
            if layer.spec.causal and any(w[1] != 0 for w in per_head):
                raise ValueError(f"{key}: a causal layer needs windows with right == 0, got {windows}")
            layers[index] = LayerAttention(layer.spec, per_head, source=key)
        return layers

    def describe(self, num_layers: int, num_heads: int) -> str:
        """Short human-readable summary, e.g. ``6 x local(32,32)`` or ``2 x local(255,0) + 1 x mixed(...)``."""
        runs: list[list] = []  # [count, text]
        for layer in self.expand(num_layers, num_heads):
            text = layer.describe()
            if runs and runs[-1][1] == text:
                runs[-1][0] += 1
            else:
                runs.append([1, text])
        return " + ".join(f"{count} x {text}" for count, text in runs)

    def check_clusters_fit(self, num_tokens: int, what: str, key: str = "attention") -> None:
        """Routing heads with more clusters than a training sequence has tokens (``what`` says which) leave
        clusters empty on every batch: their centroids never move and non-causal groups come out empty.
        ``key``: where this section sits in the recipe, for the message."""
        sections = [("default", self.default)]
        if self.top is not None and self.num_top_layers > 0:
            sections.append(("top", self.top))
        sections += [(f"overrides.{i}", spec) for i, spec in self.overrides.items()]
        for name, spec in sections:
            if spec.uses_routing() and spec.num_clusters > num_tokens:
                raise ValueError(f"{key}.{name}.num_clusters ({spec.num_clusters}) is more than the {num_tokens} "
                                 f"tokens of {what}: clusters would stay empty; lower it")
