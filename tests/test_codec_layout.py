"""Inference layouts of the codec against the plain ones: the SEANet encoder's and decoder's channels-last
stages against the channels-first reference (the same weights through nn.Conv1d / ConvTranspose1d), forward and
gradients, fp32 and bf16, causal and not, odd lengths with padded rows; the split BiLSTM against the packed one;
and the folded (tokenize-time) codec against the trained one."""

from __future__ import annotations

import logging

import pytest
import torch
from test_codec_util import speechlike, tiny_codec_config, zero_conv_biases
from torch.nn import functional as F

from seqwin import cpu_bf16
from seqwin.models.codec import create_codec, seanet
from seqwin.models.codec.bottleneck import LSTMBottleneck
from seqwin.models.codec.seanet import SEANetDecoder, SEANetEncoder


def _run(encoder: SEANetEncoder, wav: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype):
    x = wav.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = encoder(x, valid)
    torch.manual_seed(1)
    (y.float() * torch.randn(y.shape)).sum().backward()
    grads = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    return y.float(), x.grad, grads


def _encoder_case(causal: bool):
    # two residual units per stage: dilations 1 and 2; strides 5 (k=10) give the asymmetric non-causal padding
    encoder = SEANetEncoder(4, (2, 4, 5, 8), 7, 3, 2, 2, causal)
    hop = 320
    valid = torch.tensor([7 * hop, 5 * hop, 2 * hop])  # samples: odd frame counts, two padded rows
    wav = torch.stack([torch.from_numpy(speechlike(7 * hop / 16000, seed=k)) for k in range(3)])[:, None]
    return encoder, wav * (torch.arange(wav.shape[-1])[None] < valid[:, None])[:, None], valid, valid // hop


def _decoder_case(causal: bool):
    decoder = SEANetDecoder(4, (2, 4, 5, 8), 7, 3, 2, 2, causal)
    valid = torch.tensor([7, 5, 2])  # frames
    features = torch.randn(3, 64, 7) * (torch.arange(7)[None] < valid[:, None])[:, None]
    return decoder, features, valid, valid * 320


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


# Each path against float32 channels-first (nn.Conv1d arithmetic): float32 layouts agree to rounding; bf16 paths are
# as far from float32 as bf16 arithmetic puts them. Measured (AMD EPYC): forward 0.007-0.008, gradients up to 0.057
# of their largest magnitude, the same for every layout; a convolution oneDNN gets wrong in bf16 is off by 0.2-1.0.
_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (0.03, 0.15)}  # (forward, gradients)
_PATHS = [(0, torch.bfloat16), (512, torch.float32), (512, torch.bfloat16), (16, torch.float32), (16, torch.bfloat16)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("below,dtype", _PATHS, ids=[f"below{b}-{str(d)[6:]}" for b, d in _PATHS])
@pytest.mark.parametrize("case", [_encoder_case, _decoder_case], ids=["encoder", "decoder"])
def test_layouts_and_bf16_match_float32_channels_first(case, below, dtype, causal):
    """``below``: 0 every stage channels-first, 512 every stage channels-last, 16 the narrow ones only."""
    torch.manual_seed(0)
    net, inputs, valid, valid_out = case(causal)
    net.set_channels_last(0)
    ref, ref_grad_in, ref_grads = _run(net, inputs, valid, torch.float32)
    net.set_channels_last(below)
    layouts = [m.channels_last for m in net.modules() if hasattr(m, "channels_last")]
    assert all(layouts) == (below == 512) and any(layouts) == (below > 0)
    out, grad_in, grads = _run(net, inputs, valid, dtype)
    assert out.shape == ref.shape
    forward_tol, grad_tol = _TOLERANCE[dtype]
    assert _relative_error(out.detach(), ref.detach()) <= forward_tol
    for row, keep in enumerate(valid_out.tolist()):  # padded frames / samples stay zero
        assert (out[row, :, keep:] == 0).all()
    for grad, ref_grad in zip([grad_in, *grads], [ref_grad_in, *ref_grads], strict=True):
        assert _relative_error(grad, ref_grad) <= grad_tol


def test_bf16_convolutions_this_cpu_gets_wrong_run_in_float32(monkeypatch, caplog):
    """A bf16 convolution oneDNN computes wrongly (as its AMX kernels do for some shapes in torch 2.9.1) is caught
    by the per-configuration probe and run in float32; without the probe the same network is far off."""
    real_conv2d = F.conv2d

    def wrong_in_bf16(x, weight, *args, **kw):  # channels-last layers' kernel: right in float32 only
        y = real_conv2d(x, weight, *args, **kw)
        return y.flip(-1) if x.dtype == torch.bfloat16 else y

    monkeypatch.setattr(F, "conv2d", wrong_in_bf16)
    monkeypatch.setattr(cpu_bf16, "_verdicts", {})
    torch.manual_seed(0)
    net, inputs, valid, _ = _encoder_case(False)
    ref = _run(net, inputs, valid, torch.float32)[0]
    net.set_channels_last(16)
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__):
        guarded = _run(net, inputs, valid, torch.bfloat16)[0]
    assert _relative_error(guarded.detach(), ref.detach()) <= _TOLERANCE[torch.bfloat16][0]
    flagged = {key for key, error in cpu_bf16._verdicts.items() if error > cpu_bf16.MAX_ERROR}
    channels_last = {key for key in cpu_bf16._verdicts if key[0][-1]}  # (layer configuration, backward)
    assert flagged == channels_last and flagged  # exactly the layers whose kernel is wrong
    assert sum("runs in float32" in r.message for r in caplog.records) == len(flagged)  # one warning each
    monkeypatch.setattr(seanet, "bf16_is_sound", lambda *args: True)
    unguarded = _run(net, inputs, valid, torch.bfloat16)[0]
    assert _relative_error(unguarded.detach(), ref.detach()) > 0.2


def _models(**kw):
    torch.manual_seed(0)
    trained = zero_conv_biases(create_codec(tiny_codec_config(**kw), decoder=False).eval())
    folded = create_codec(tiny_codec_config(**kw), decoder=False)
    folded.load_state_dict(trained.state_dict())
    return trained, folded


@pytest.mark.parametrize("bottleneck,causal", [("attention", True), ("lstm", False)])
@pytest.mark.parametrize("bf16", [False, True])
def test_folded_codec_gives_the_same_codes(bottleneck, causal, bf16):
    trained, folded = _models(bottleneck=bottleneck, causal=causal)
    folded.fold_for_inference(bf16=bf16)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in folded.modules())
    assert folded.encoder.layers[0].channels_last and not trained.encoder.layers[0].channels_last
    dtypes = {name: p.dtype for name, p in folded.named_parameters()}
    expected = torch.bfloat16 if bf16 else torch.float32
    assert dtypes["encoder_out.conv.weight"] == expected
    assert all(d == torch.float32 for name, d in dtypes.items() if "norm" in name)  # norms: float32, as autocast
    assert folded.quantizer.rvq.codebooks.dtype == torch.float32
    waves = [torch.from_numpy(speechlike(s, seed=i)) for i, s in enumerate((0.9, 0.55))]
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lens = torch.tensor([len(w) for w in waves])
    # bf16: the weights autocast would cast on every call, cast once, and channels-last kernels instead of
    # channels-first ones (a padded BiLSTM batch runs on other kernels too: test_split_lstm_matches_packed), so
    # the rounding differs. Measured (AMD EPYC): codes 100 % equal, latents 0.5-1.4 % from float32 for both models
    codes, frame_lens = folded.encode(batch, lens, bf16=bf16)
    ref_codes, ref_lens = trained.encode(batch, lens, bf16=bf16)
    assert torch.equal(frame_lens, ref_lens) and torch.equal(codes >= 0, ref_codes >= 0)
    if not bf16:
        assert torch.equal(codes, ref_codes)
        return
    assert (codes == ref_codes)[codes >= 0].float().mean() >= 0.98
    with torch.no_grad():
        latent = trained.encode_latent(batch, lens)[0]
        with torch.autocast("cpu", torch.bfloat16):
            folded_latent = folded.encode_latent(batch, lens)[0].float()
    assert (folded_latent - latent).norm() <= 0.03 * latent.norm()
    with pytest.raises(ValueError, match="bf16=True"):
        folded.encode(batch, lens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_lstm_matches_packed(dtype):
    torch.manual_seed(0)
    packed = LSTMBottleneck(8, 2).eval().to(dtype)
    split = LSTMBottleneck(8, 2).eval().to(dtype)
    split.load_state_dict(packed.state_dict())
    split.split_directions()
    lens = torch.tensor([11, 7, 1, 10])
    x = torch.randn(4, 11, 8, dtype=dtype)
    with torch.no_grad():
        ref, out = packed(x, lens), split(x, lens)
        assert torch.equal(split(x, torch.full((4,), 11)), packed(x, torch.full((4,), 11)))  # unpadded: one path
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    for row, n in enumerate(lens.tolist()):
        assert (out[row, n:] == 0).all()
        with torch.no_grad():  # each row as a lone sequence
            alone = packed.lstm(x[row: row + 1, :n])[0]
        torch.testing.assert_close(out[row: row + 1, :n].float(), alone.float(), **tol)
