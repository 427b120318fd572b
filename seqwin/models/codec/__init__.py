"""FuseCodec speech codec: SEANet encoder/decoder, bottleneck sequence model, residual VQ, teacher fusion and
distillation (arXiv 2509.11425), discriminators and losses. Training, tokenization and evaluation live in
:mod:`seqwin.recipes.codec`."""

from seqwin.models.codec.config import AttentionBottleneckConfig, CodecConfig, QuantizerConfig, fusecodec_base
from seqwin.models.codec.fusion import TeacherBatch
from seqwin.models.codec.model import Codec, CodecOutput, create_codec
from seqwin.models.codec.quantizer import codebook_stats

__all__ = [
    "AttentionBottleneckConfig",
    "Codec",
    "CodecConfig",
    "CodecOutput",
    "QuantizerConfig",
    "TeacherBatch",
    "codebook_stats",
    "create_codec",
    "fusecodec_base",
]
