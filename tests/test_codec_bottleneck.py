"""Codec attention bottleneck: the masked windowed mean against a loop, and the property that keeps the RVQ alive
(a time-constant per-channel offset passes through unchanged instead of steering the blocks)."""

from __future__ import annotations

import pytest
import torch

from seqwin.models.codec.bottleneck import AttentionBottleneck, windowed_mean


def _loop_mean(x: torch.Tensor, lens: list[int], window: tuple[int, int]) -> torch.Tensor:
    left, right = window
    out = torch.zeros_like(x)
    for b, n in enumerate(lens):
        for t in range(n):
            out[b, t] = x[b, max(0, t - left): min(n, t + right + 1)].mean(0)
    return out


@pytest.mark.parametrize("window", [(0, 0), (3, 0), (4, 2), (50, 50)])
def test_windowed_mean_matches_loop(window):
    torch.manual_seed(0)
    x = torch.randn(3, 17, 5, dtype=torch.float64)
    lens = [17, 9, 1]
    mask = torch.arange(17)[None] < torch.tensor(lens)[:, None]
    got = windowed_mean(x, mask, window)
    want = _loop_mean(x, lens, window)
    for b, n in enumerate(lens):  # past a row's end the value is irrelevant (masked downstream)
        torch.testing.assert_close(got[b, :n], want[b, :n])


@pytest.mark.parametrize("window", [(6, 0), (4, 4)])
def test_time_constant_offset_passes_through(window):
    # The blocks see x minus its windowed mean, so adding c (constant over time, per channel) to the input adds
    # exactly c to the output: no branch can turn a drifting offset into a larger one.
    torch.manual_seed(0)
    model = AttentionBottleneck(32, num_layers=2, heads=4, window=window, ffn_mult=2, dropout_p=0.0).eval()
    x = torch.randn(2, 23, 32)
    lens = torch.tensor([23, 15])
    offset = 5.0 * torch.randn(2, 1, 32)
    with torch.no_grad():
        base, shifted = model(x, lens), model(x + offset, lens)
    for b, n in enumerate(lens.tolist()):
        torch.testing.assert_close(shifted[b, :n], base[b, :n] + offset[b], atol=2e-4, rtol=1e-4)
    assert not torch.allclose(base, x)  # the blocks do change the stream
