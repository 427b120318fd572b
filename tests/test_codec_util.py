"""Shared helpers for the codec tests: tiny codec configs, a tiny corpus, a tiny fairseq2 wav2vec2 teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from seqwin.models.codec import AttentionBottleneckConfig, CodecConfig, QuantizerConfig


def tiny_codec_config(bottleneck: str = "attention", causal: bool = True, **kw) -> CodecConfig:
    window = (6, 0) if causal else (6, 6)
    return CodecConfig(
        channels=4, latent_dim=32, bottleneck=bottleneck, causal=causal, lstm_layers=1, teacher_dim=16,
        attention=AttentionBottleneckConfig(num_layers=2, num_heads=4, window=window, ffn_mult=1),
        quantizer=QuantizerConfig(num_quantizers=4, codebook_size=64, kmeans_init=False, quantizer_dropout=False),
        **kw,
    )


def zero_conv_biases(model: torch.nn.Module) -> torch.nn.Module:
    """An untrained SEANet's output is nearly all conv bias, constant over time; bf16 keeps 8 bits of it and the
    per-frame part drowns in its rounding, so most codes sit on a code boundary. Trained codecs are not like that
    (demo codec: 0.3 % latent error, level-1 codes 97.6 % equal), so bf16 tests zero the biases to test the
    arithmetic, not the initialisation."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) and module.bias is not None:
                module.bias.zero_()
    return model


def speechlike(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Deterministic harmonic tones with a syllable-rate envelope plus a little noise (float32, |x| < 1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 110 + 40 * rng.random()
    wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.random()) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.random())
    return (0.15 * wave * env + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_corpus(root: Path, split: str = "train", count: int = 6, seconds: float = 0.6,
                 sample_rate: int = 16000) -> Path:
    """``root/audio/<split>/uttK.flac`` + ``root/manifests/<split>.tsv/.wrd``; returns the manifest folder."""
    audio = root / "audio"
    rows, words = [], []
    for k in range(count):
        wave = speechlike(seconds * (1 + 0.5 * (k % 3)), seed=k, sample_rate=sample_rate)
        rel = f"{split}/utt{k}.flac"
        (audio / split).mkdir(parents=True, exist_ok=True)
        sf.write(audio / rel, wave, sample_rate, subtype="PCM_16")
        rows.append(f"{rel}\t{len(wave)}")
        words.append(["HELLO WORLD", "GOOD MORNING", ""][k % 3] or "YES")
    manifests = root / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / f"{split}.tsv").write_text("\n".join([str(audio)] + rows) + "\n")
    (manifests / f"{split}.wrd").write_text("\n".join(words) + "\n")
    return manifests


def tiny_wav2vec2(asr_vocab: int | None = None):
    """A randomly initialised fairseq2 wav2vec2 (or wav2vec2 CTC) model with model_dim 16, and its config."""
    from fairseq2.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2EncoderConfig, create_wav2vec2_model
    from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrConfig, create_wav2vec2_asr_model

    torch.manual_seed(0)
    enc = Wav2Vec2EncoderConfig(
        model_dim=16, num_encoder_layers=2, num_encoder_attn_heads=2, ffn_inner_dim=32, feature_dim=8,
        feature_extractor_layer_descs=[(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2,
        pos_conv_kernel_size=8, num_pos_conv_groups=2, dropout_p=0.0, attn_dropout_p=0.0, layer_drop_p=0.0,
    )
    if asr_vocab is not None:
        cfg = Wav2Vec2AsrConfig(encoder_config=enc, target_vocab_size=asr_vocab)
        return create_wav2vec2_asr_model(cfg), cfg
    cfg = Wav2Vec2Config(encoder_config=enc, final_dim=8, quantized_dim=8, num_codebook_entries=8,
                         spatial_mask_span_len=4)
    return create_wav2vec2_model(cfg), cfg
