"""fairseq2 adapters of seqwin attention: SDPAs (one per layer spec: :func:`make_sdpa`), incremental-decoding
states and WindowKV for fairseq2 models.

The only part of :mod:`seqwin.attention` that imports fairseq2; the algorithms themselves need torch alone.
"""

from seqwin.attention.fairseq2.decoding import StatefulMixedSDPA, attention_layers, decoding_session
from seqwin.attention.fairseq2.factory import make_sdpa, make_state_factory
from seqwin.attention.fairseq2.mixed_sdpa import MixedSDPA, collect_aux_losses
from seqwin.attention.fairseq2.sliding_window_sdpa import SlidingWindowSDPA, windowize
from seqwin.attention.fairseq2.sliding_window_state import SlidingWindowAttentionStateFactory
from seqwin.attention.fairseq2.windowkv import WindowKV

__all__ = [
    "MixedSDPA",
    "SlidingWindowAttentionStateFactory",
    "SlidingWindowSDPA",
    "StatefulMixedSDPA",
    "WindowKV",
    "attention_layers",
    "collect_aux_losses",
    "decoding_session",
    "make_sdpa",
    "make_state_factory",
    "windowize",
]
