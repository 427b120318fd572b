"""Inference layouts of the codec against the plain ones: the SEANet encoder's and decoder's channels-last
stages against the channels-first reference (the same weights through nn.Conv1d / ConvTranspose1d), forward and
gradients, fp32 and bf16, causal and not, odd lengths with padded rows; the split BiLSTM against the packed one;
and the folded (tokenize-time) codec against the trained one."""

from __future__ import annotations

import pytest
import torch
from test_codec_util import speechlike, tiny_codec_config

from seqwin.models.codec import create_codec
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("below", [512, 16])  # every stage channels-last | the narrow ones, then channels-first
@pytest.mark.parametrize("case", [_encoder_case, _decoder_case], ids=["encoder", "decoder"])
def test_channels_last_matches_channels_first(case, below, causal, dtype):
    torch.manual_seed(0)
    net, inputs, valid, valid_out = case(causal)
    net.set_channels_last(below)
    layouts = [m.channels_last for m in net.modules() if hasattr(m, "channels_last")]
    assert any(layouts) and (all(layouts) == (below == 512))
    out, grad_in, grads = _run(net, inputs, valid, dtype)
    net.set_channels_last(0)
    assert not any(m.channels_last for m in net.modules() if hasattr(m, "channels_last"))
    ref, ref_grad_in, ref_grads = _run(net, inputs, valid, dtype)
    assert out.shape == ref.shape
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out / ref.abs().max(), ref / ref.abs().max(), **tol)
    for row, keep in enumerate(valid_out.tolist()):  # padded frames / samples stay zero
        assert (out[row, :, keep:] == 0).all()
    for grad, ref_grad in zip([grad_in, *grads], [ref_grad_in, *ref_grads], strict=True):
        scale = ref_grad.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(grad / scale, ref_grad / scale, **tol)


def _models(**kw):
    torch.manual_seed(0)
    trained = create_codec(tiny_codec_config(**kw), decoder=False).eval()
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
    # bf16: the weights autocast would cast on every call, cast once; the arithmetic is the same. A padded BiLSTM
    # batch runs on other kernels (test_split_lstm_matches_packed), so in bf16 its rounding differs
    codes, frame_lens = folded.encode(batch, lens, bf16=bf16)
    ref_codes, ref_lens = trained.encode(batch, lens, bf16=bf16)
    assert torch.equal(frame_lens, ref_lens)
    if bf16 and bottleneck == "lstm":
        assert torch.equal(codes >= 0, ref_codes >= 0) and (codes == ref_codes).float().mean() > 0.9
    else:
        assert torch.equal(codes, ref_codes)
    if bf16:
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
