"""The FuseCodec generator: SEANet encoder -> bottleneck sequence model -> latent -> [fusion] -> RVQ -> decoder.

Frames: an input of ``T`` samples gives ``ceil(T / hop)`` frames (the input is zero-padded to a whole hop), and
decoding ``F`` frames gives ``F * hop`` samples. Batches carry per-row lengths; padding is re-zeroed between conv
blocks, packed away from the LSTM and masked in attention, so a file's codes do not depend on what it is batched
with. :meth:`Codec.encode_chunked` encodes long files in chunks; see its docstring for when that is exact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from seqwin.cpu_bf16 import cpu_has_bf16_instructions
from seqwin.models.codec.bottleneck import AttentionBottleneck, LSTMBottleneck
from seqwin.models.codec.config import CodecConfig
from seqwin.models.codec.fusion import TeacherBatch, TeacherFusion, TeacherProjection
from seqwin.models.codec.quantizer import ResidualQuantizer
from seqwin.models.codec.seanet import SConv1d, SEANetDecoder, SEANetEncoder, receptive_context

log = logging.getLogger(__name__)


@dataclass
class CodecOutput:
    recon: Tensor  # (B, T) reconstructed waveform, cropped to the input length
    codes: Tensor  # (B, Q, F) int64, -1 on padding / dropped levels
    commitment: Tensor  # () unweighted commitment MSE
    frame_lens: Tensor  # (B,) valid frames per row
    teacher_pred: Tensor | None  # (B, F, teacher_dim) projected RVQ level 1 (distill / context_align variants)
    latent: Tensor  # (B, F, latent_dim) the encoder's output, before fusion and quantization


def _make_sequence_model(cfg: CodecConfig, dim: int) -> nn.Module | None:
    if cfg.bottleneck == "lstm":
        return LSTMBottleneck(dim, cfg.lstm_layers)
    if cfg.bottleneck == "attention":
        a = cfg.attention
        return AttentionBottleneck(dim, a.num_layers, a.num_heads, a.window, a.ffn_mult, a.dropout_p)
    return None


class Codec(nn.Module):
    def __init__(self, cfg: CodecConfig, *, decoder: bool = True) -> None:
        """``decoder=False`` builds the encoder side only (encoder, bottleneck, fusion, RVQ): what ``seqwin
        tokenize`` needs; for the paper model the decoder is half the generator's weights."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.hop = cfg.hop_length
        conv_args = (cfg.channels, cfg.strides, cfg.kernel_size, cfg.residual_kernel_size,
                     cfg.num_residual_layers, cfg.dilation_base, cfg.causal)
        self.encoder = SEANetEncoder(*conv_args)
        width = self.encoder.out_channels
        self.encoder_seq = _make_sequence_model(cfg, width)
        seq_out = width if self.encoder_seq is None else self.encoder_seq.out_dim
        self.encoder_out = SConv1d(seq_out, cfg.latent_dim, cfg.kernel_size, causal=cfg.causal)
        self.fusion = (TeacherFusion(cfg.latent_dim, cfg.teacher_dim, cfg.fusion_heads, cfg.modality_dropout)
                       if cfg.variant == "fusion" else None)
        self.quantizer = ResidualQuantizer(cfg.latent_dim, cfg.quantizer)
        self.teacher_proj = (TeacherProjection(cfg.latent_dim, cfg.teacher_dim)
                             if cfg.variant in ("distill", "context_align") else None)
        self.decoder_in = SConv1d(cfg.latent_dim, width, cfg.kernel_size, causal=cfg.causal) if decoder else None
        self.decoder_seq = _make_sequence_model(cfg, width) if decoder else None
        self.decoder_seq_out = (nn.Linear(self.decoder_seq.out_dim, width)
                                if self.decoder_seq is not None and self.decoder_seq.out_dim != width else None)
        self.decoder = SEANetDecoder(*conv_args) if decoder else None

    # -- lengths -------------------------------------------------------------------------------------------

    def num_frames(self, samples: Tensor | int) -> Tensor | int:
        if isinstance(samples, Tensor):
            return torch.div(samples + self.hop - 1, self.hop, rounding_mode="floor")
        return math.ceil(samples / self.hop)

    def _pad(self, wav: Tensor, seq_lens: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        batch, samples = wav.shape
        if seq_lens is None:
            seq_lens = torch.full((batch,), samples, dtype=torch.long, device=wav.device)
        frames = int(self.num_frames(samples))
        wav = F.pad(wav, (0, frames * self.hop - samples))
        frame_lens = self.num_frames(seq_lens.to(wav.device))
        padded = None if bool((frame_lens == frames).all()) else frame_lens
        if padded is not None:  # samples past a row's length must be zero, as they are for a lone file
            wav = wav * (torch.arange(wav.shape[1], device=wav.device)[None] < seq_lens[:, None]).to(wav.dtype)
        return wav, frame_lens, padded

    # -- encoder / decoder ---------------------------------------------------------------------------------

    def encode_latent(self, wav: Tensor, seq_lens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wav (B, T)`` -> latent ``(B, F, latent_dim)`` and ``frame_lens (B,)``."""
        wav, frame_lens, padded = self._pad(wav, seq_lens)
        h = self.encoder(wav[:, None], None if padded is None else padded * self.hop)  # (B, C, F)
        if self.encoder_seq is not None:
            h = self.encoder_seq(h.transpose(1, 2), frame_lens).transpose(1, 2)
            if padded is not None:  # the next conv must see zeros past each row's end
                h = h * _mask(frame_lens, h.shape[-1])[:, None].to(h.dtype)
        z = self.encoder_out(F.elu(h))
        if padded is not None:
            z = z * _mask(frame_lens, z.shape[-1])[:, None].to(z.dtype)
        return z.transpose(1, 2), frame_lens

    def decode_latent(self, q: Tensor, frame_lens: Tensor | None = None) -> Tensor:
        """Quantized latent ``(B, F, latent_dim)`` -> waveform ``(B, F * hop)``."""
        if self.decoder is None:
            raise RuntimeError("this codec was built without its decoder (encoder-only, for tokenizing); "
                               "build it with decoder=True to decode")
        frames = q.shape[1]
        padded = None if frame_lens is None or bool((frame_lens == frames).all()) else frame_lens
        if padded is not None:
            q = q * _mask(padded, frames)[..., None].to(q.dtype)
        h = self.decoder_in(q.transpose(1, 2))
        if self.decoder_seq is not None:
            lens = frame_lens if frame_lens is not None else torch.full((q.shape[0],), frames, device=q.device)
            s = self.decoder_seq(h.transpose(1, 2), lens)
            if self.decoder_seq_out is not None:
                s = self.decoder_seq_out(s)
            h = s.transpose(1, 2) if self.decoder_seq.includes_input else h + s.transpose(1, 2)
        if padded is not None:
            h = h * _mask(padded, frames)[:, None].to(h.dtype)
        return self.decoder(h, padded)[:, 0]

    # -- public API ----------------------------------------------------------------------------------------

    def forward(self, wav: Tensor, seq_lens: Tensor | None = None, teachers: TeacherBatch | None = None) -> CodecOutput:
        latent, frame_lens = self.encode_latent(wav, seq_lens)
        z = latent if self.fusion is None else self.fusion(latent, teachers)
        out = self.quantizer(z, _mask(frame_lens, z.shape[1]))
        recon = self.decode_latent(out.quantized, frame_lens)[:, : wav.shape[1]]
        pred = self.teacher_proj(out.first_level) if self.teacher_proj is not None else None
        return CodecOutput(recon, out.codes, out.commitment, frame_lens, pred, latent)

    @torch.inference_mode()
    def encode(self, wav: Tensor, seq_lens: Tensor | None = None, num_quantizers: int | None = None,
               teachers: TeacherBatch | None = None, *, bf16: bool = False) -> tuple[Tensor, Tensor]:
        """``wav (B, T)`` -> codes ``(B, n, F)`` (-1 on padded frames) and ``frame_lens (B,)``. Call in eval mode:
        in training mode the quantizer would update its codebooks.

        ``bf16``: the encoder's convolutions and matmuls run in bfloat16 (autocast; about twice the CPU throughput
        where the CPU has bf16 instructions), the nearest-code search stays in float32. Codes can differ from the
        float32 ones where a latent lies near the boundary of two codes (trained demo codec: 97.6 % of level-1 codes
        equal), and :meth:`encode_chunked` agrees with whole-file encoding only nearly (bf16 rounding depends on the
        convolution shapes; 99.3-99.98 % of codes per level with 0.5 s chunks) -- float32 is exact.
        """
        if not bf16 and self.encoder_out.conv.bias.dtype == torch.bfloat16:  # (the weight may be parametrized)
            raise ValueError("this codec's encoder weights are bfloat16 (fold_for_inference(bf16=True)): "
                             "encode with bf16=True")
        with parametrize.cached(), torch.autocast(wav.device.type, torch.bfloat16, enabled=bf16):
            z, frame_lens = self.encode_latent(wav, seq_lens)
            if self.fusion is not None:
                z = self.fusion(z, teachers)
        return self.quantizer.encode(z.float(), _mask(frame_lens, z.shape[1]), num_quantizers), frame_lens

    @torch.inference_mode()
    def decode(self, codes: Tensor, frame_lens: Tensor | None = None) -> Tensor:
        """Codes ``(B, n, F)`` of the first ``n`` levels -> waveform ``(B, F * hop)``; rows past ``frame_lens``
        are zero."""
        if frame_lens is not None:
            codes = codes.masked_fill(~_mask(frame_lens, codes.shape[-1])[:, None], 0)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cfg.quantizer.codebook_size):
            raise ValueError(f"codes must be in [0, {self.cfg.quantizer.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        with parametrize.cached():
            wav = self.decode_latent(self.quantizer.lookup(codes), frame_lens)
        if frame_lens is not None:
            wav = wav * _mask(frame_lens * self.hop, wav.shape[1]).to(wav.dtype)
        return wav

    def fold_for_inference(self, *, bf16: bool = False) -> Codec:
        """Make this an inference-only codec, as ``seqwin tokenize`` and ``detokenize`` use it: fold the weight
        normalisation into plain convolution weights (instead of recomputing them on every call), run the encoder's
        and decoder's few-channel stages channels-last (:meth:`SEANetEncoder.set_channels_last`), run BiLSTMs on
        padded batches without packing (:meth:`LSTMBottleneck.split_directions`) and, with ``bf16``, store the
        encoder side's weights in bfloat16. Those are the values autocast casts them to on every
        ``encode(bf16=True)`` call, so the codes stay the same; the casts are what is saved (about 5 % of the
        paper-size encode on a 2-core CPU). The RVQ codebooks stay float32, as the search does. A folded codec
        cannot be trained or saved as a training checkpoint (its weights are no longer the trained parameters)."""
        if bf16 and not cpu_has_bf16_instructions():
            log.warning("this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): bf16 runs emulated, slower "
                        "than float32")
        self.encoder.set_channels_last()
        if self.decoder is not None:
            self.decoder.set_channels_last()
        for module in self.modules():
            if parametrize.is_parametrized(module):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        if bf16:
            for part in (self.encoder, self.encoder_seq, self.encoder_out, self.fusion):
                for module in () if part is None else part.modules():
                    # what autocast runs in bf16; norms stay float32, as autocast keeps them
                    if isinstance(module, (nn.Conv1d, nn.Linear, nn.LSTM)):
                        module.to(torch.bfloat16)
        for seq in (self.encoder_seq, self.decoder_seq):
            if isinstance(seq, LSTMBottleneck):
                seq.split_directions()
        return self.eval()

    # -- chunked encoding ----------------------------------------------------------------------------------

    def context_samples(self) -> tuple[int, int] | None:
        """(left, right) samples of context that determine one frame's codes beyond the frame itself, rounded
        up to whole hops; ``None`` when it is unbounded (a BiLSTM bottleneck or the fusion's global vectors)."""
        if isinstance(self.encoder_seq, LSTMBottleneck):
            return None
        left, right = receptive_context(self.encoder)
        frames_left, frames_right = self.encoder_out.context
        if isinstance(self.encoder_seq, AttentionBottleneck):
            seq_left, seq_right = self.encoder_seq.frame_context()
            frames_left, frames_right = frames_left + seq_left, frames_right + seq_right
        left += frames_left * self.hop
        right += frames_right * self.hop
        return self.hop * math.ceil(left / self.hop), self.hop * math.ceil(right / self.hop)

    @torch.no_grad()
    def encode_chunked(self, wav: Tensor, chunk_samples: int, *, num_quantizers: int | None = None,
                       context_samples: int | None = None, max_batch: int = 16, bf16: bool = False) -> Tensor:
        """Codes ``(n, ceil(T / hop))`` of one file ``wav (T,)``, encoded ``chunk_samples`` at a time.

        Each chunk (a whole number of hops; ``chunk_samples`` is rounded down to one) is encoded together with the
        audio before it and, for a non-causal model, after it, and only the chunk's own frames are kept. When the
        receptive field is bounded (causal model, or an attention bottleneck) that context is the whole receptive
        field and the codes equal whole-file codes exactly. With a BiLSTM bottleneck the receptive field is the
        whole file: ``context_samples`` (default one second each side) is used instead, and codes near chunk
        boundaries can differ from whole-file codes.
        """
        if wav.dim() != 1:
            raise ValueError(f"encode_chunked takes one mono file (T,), got shape {tuple(wav.shape)}")
        chunk = (chunk_samples // self.hop) * self.hop
        if chunk < self.hop:
            raise ValueError(f"chunk_samples must be at least one hop ({self.hop}), got {chunk_samples}")
        total = wav.shape[0]
        exact = self.context_samples()
        if exact is None:
            extra = self.cfg.sample_rate if context_samples is None else context_samples
            left = right = self.hop * math.ceil(extra / self.hop)
        else:
            left, right = exact
        pieces, keep = [], []
        for start in range(0, total, chunk):
            end = min(start + chunk, total)
            a, b = max(0, start - left), min(total, end + right)
            pieces.append(wav[a:b])
            keep.append(((start - a) // self.hop, int(self.num_frames(end - start))))
        out = []
        for i in range(0, len(pieces), max_batch):
            group = pieces[i: i + max_batch]
            lens = torch.tensor([len(p) for p in group], device=wav.device)
            batch = torch.nn.utils.rnn.pad_sequence(group, batch_first=True)
            codes, _ = self.encode(batch, lens, num_quantizers, bf16=bf16)
            for row, (skip, count) in enumerate(keep[i: i + max_batch]):
                out.append(codes[row, :, skip: skip + count])
        return torch.cat(out, dim=1)


def _mask(lens: Tensor, size: int) -> Tensor:
    return torch.arange(size, device=lens.device)[None] < lens[:, None]


def create_codec(cfg: CodecConfig, *, decoder: bool = True) -> Codec:
    """Build a randomly initialised codec for ``cfg`` (validated); ``decoder=False``: encoder side only."""
    return Codec(cfg, decoder=decoder)
