"""fairseq2 model families ``seqwin_wav2vec2`` (SSL) and ``seqwin_wav2vec2_asr`` (CTC).

Registration is explicit: ``fairseq2.init_fairseq2(extras=register_seqwin_wav2vec2)``, or a call from your own
fairseq2 extension. seqwin declares no ``fairseq2.extension`` entry point, so fairseq2 never imports these models
by itself (and never registers them a second time, which it refuses). Once registered, fairseq2 asset cards,
``checkpoint.load`` and recipes can name them::

    name: my_windowed_asr
    model_family: seqwin_wav2vec2_asr
    model_arch: tiny            # a preset; model_config: {...} overrides fields
    checkpoint: file:///path/to/model.pt

The state-dict converter accepts seqwin model files, fairseq2 checkpoints and fairseq (v1) checkpoints, so
fairseq2 can load any of them straight into a windowed-attention model.
"""

from __future__ import annotations

from typing import Any

from fairseq2.composition import register_model_family
from fairseq2.models import ModelHubAccessor
from fairseq2.models.wav2vec2 import Wav2Vec2Model
from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrModel
from fairseq2.runtime.config_registry import ConfigRegistrar
from fairseq2.runtime.dependency import DependencyContainer

from seqwin.models.wav2vec2 import fairseq1
from seqwin.models.wav2vec2.config import (
    ASR_FAMILY,
    SSL_FAMILY,
    SeqwinWav2Vec2AsrConfig,
    SeqwinWav2Vec2Config,
    asr_presets,
    ssl_presets,
)
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model, create_seqwin_wav2vec2_model

get_seqwin_wav2vec2_hub = ModelHubAccessor(SSL_FAMILY, Wav2Vec2Model, SeqwinWav2Vec2Config)
get_seqwin_wav2vec2_asr_hub = ModelHubAccessor(ASR_FAMILY, Wav2Vec2AsrModel, SeqwinWav2Vec2AsrConfig)


def convert_state_dict(checkpoint: dict[str, Any], config: Any) -> dict[str, Any]:
    """Any supported checkpoint layout -> a fairseq2-keyed state dict for ``config``'s model."""
    from fairseq2.models.transformer import TransformerNormOrder

    from seqwin.models.wav2vec2.checkpoint import convert_fairseq1

    state = checkpoint.get("model", checkpoint)
    if fairseq1.is_fairseq1(state):
        asr = isinstance(config, SeqwinWav2Vec2AsrConfig)
        norm = config.model.encoder_config.norm_order
        return convert_fairseq1(dict(state), asr, TransformerNormOrder(norm))
    return dict(state)


def register_seqwin_wav2vec2(container: DependencyContainer) -> None:
    register_model_family(container, SSL_FAMILY, kls=Wav2Vec2Model, config_kls=SeqwinWav2Vec2Config,
                          factory=create_seqwin_wav2vec2_model, state_dict_converter=convert_state_dict)
    register_model_family(container, ASR_FAMILY, kls=Wav2Vec2AsrModel, config_kls=SeqwinWav2Vec2AsrConfig,
                          factory=create_seqwin_wav2vec2_asr_model, state_dict_converter=convert_state_dict)
    for kls, presets in ((SeqwinWav2Vec2Config, ssl_presets), (SeqwinWav2Vec2AsrConfig, asr_presets)):
        arch = ConfigRegistrar(container, kls)
        for name in presets():
            arch(name)(lambda name=name, presets=presets: presets()[name])
