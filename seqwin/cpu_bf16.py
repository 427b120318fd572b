"""bfloat16 layers on CPU, checked against float32 on the CPU that runs them.

torch 2.9.1's oneDNN gives wrong bfloat16 results for some convolution shapes on CPUs with AMX (Intel Sapphire
Rapids): the whole output, not a rounding error (e.g. in channels 8, kernel 8, stride 4: relative error 0.87 where
correct bf16 arithmetic gives 0.004). Which shapes fail depends on the CPU, the layout and the oneDNN kernel it picks,
so no fixed list can be trusted. Instead each distinct layer configuration is probed once per process on a tiny random
input: the layer's own computation in bf16 against the same computation in float32 on the same (bf16-rounded)
inputs, forward and gradients. A configuration whose bf16 result is far off (:data:`MAX_ERROR`, against the ~0.01 of
correct bf16 arithmetic) runs in float32 from then on, and a warning says so once.

Layers opt in two ways: seqwin's own codec convolutions call :func:`bf16_is_sound` themselves, and
:func:`guard_convs` makes the plain torch convolutions of any model (the wav2vec2 feature encoder and position
convolution) do the same, which is what bf16 training (``trainer.precision``) applies before it starts.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Largest error, relative to the float32 result's largest magnitude, that still counts as bf16 rounding. Correct
# bf16 layers measure 0.003-0.008 on the probe (80 codec conv configurations); the AMX failures measure 0.87-1.04.
MAX_ERROR = 0.05

_verdicts: dict[Hashable, float] = {}


def cpu_has_bf16_instructions() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX). Elsewhere it emulates bf16, and a bf16 model is
    several times slower than float32 (measured: the paper-size codec encoder, AMD EPYC with AVX2 only)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def runs_in_bf16_on_cpu(*tensors: Tensor) -> bool:
    """Whether a layer called with ``tensors`` computes in bf16 on the CPU: a bf16 input or weight, or bf16
    autocast."""
    if tensors[0].device.type != "cpu":
        return False
    if any(t.dtype == torch.bfloat16 for t in tensors):
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def bf16_error(key: Hashable, shapes: Sequence[tuple[int, ...]], op: Callable[..., Tensor], *,
               backward: bool) -> float:
    """The probe's error of ``op`` in bf16 on this CPU (cached per ``key`` and ``backward``): ``op(*inputs)`` on
    random inputs of ``shapes``, bf16 against float32 arithmetic on the same bf16-rounded values, the worst of the
    output and, with ``backward``, every input's gradient, each relative to the float32 result's largest magnitude."""
    if (key, backward) not in _verdicts:
        _verdicts[key, backward] = _probe(shapes, op, backward)
    return _verdicts[key, backward]


def bf16_is_sound(key: Hashable, shapes: Sequence[tuple[int, ...]], op: Callable[..., Tensor]) -> bool:
    """Whether ``op`` may run in bf16 on this CPU (see :func:`bf16_error`); its backward is probed too where
    gradients are being recorded. Warns once per ``key`` when not."""
    backward = torch.is_grad_enabled()
    fresh = (key, backward) not in _verdicts
    error = bf16_error(key, shapes, op, backward=backward)
    if error > MAX_ERROR and fresh:
        log.warning("bfloat16 %s is wrong on this CPU (probe error %.2f vs float32); it runs in float32", key, error)
    return error <= MAX_ERROR


def _probe(shapes: Sequence[tuple[int, ...]], op: Callable[..., Tensor], backward: bool) -> float:
    results = []
    # the caller may be under inference mode (encode) or autocast: the probe needs neither
    with torch.inference_mode(False), torch.set_grad_enabled(backward), torch.autocast("cpu", enabled=False):
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.randn(shape, generator=gen).bfloat16() for shape in shapes]
        for dtype in (torch.float32, torch.bfloat16):
            args = [t.to(dtype).requires_grad_(backward) for t in inputs]
            out = op(*args)
            results.append([out.detach().float()])
            if backward:
                cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
                out.backward(cotangent.to(dtype))
                results[-1] += [a.grad.float() for a in args]
    return max(float((low - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
               for ref, low in zip(*results, strict=True))


def guard_convs(model: nn.Module) -> int:
    """Make every ``nn.Conv1d`` / ``nn.Conv2d`` of ``model`` (weight-normed ones included) probe its configuration
    the first time it runs in bf16 on the CPU and run in float32 where this CPU gets it wrong. Returns how many
    layers it guarded; guarding twice is harmless. The forward is replaced on the instance by a ``partial`` of the
    module, so ``copy.deepcopy`` of the model keeps each copy bound to itself."""
    count = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and not isinstance(module.forward, functools.partial):
            module.forward = functools.partial(_guarded_conv_forward, module)
            count += 1
    return count


def _guarded_conv_forward(conv: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    weight, bias = conv.weight, conv.bias  # weight norm recomputes the weight on each access: read it once
    if runs_in_bf16_on_cpu(x, weight) and not _conv_sound(conv, weight, bias):
        with torch.autocast("cpu", enabled=False):
            return conv._conv_forward(x.float(), weight.float(), None if bias is None else bias.float())
    return conv._conv_forward(x, weight, bias)


def _conv_sound(conv: nn.Conv1d | nn.Conv2d, weight: Tensor, bias: Tensor | None) -> bool:
    # 8 outputs along each spatial axis: enough for the kernel to pick its real algorithm, cheap where bf16 is
    # emulated
    extent = tuple(8 * s + d * (k - 1) for s, d, k in zip(conv.stride, conv.dilation, conv.kernel_size, strict=True))
    key = (f"conv{len(conv.kernel_size)}d", tuple(weight.shape), conv.stride, conv.padding, conv.dilation, conv.groups,
           conv.padding_mode, bias is not None)
    shapes = [(1, conv.in_channels, *extent), tuple(weight.shape)] + ([tuple(bias.shape)] if bias is not None else [])
    return bf16_is_sound(key, shapes, lambda x, w, b=None: conv._conv_forward(x, w, b))
