"""Tokenizer speed on the CPU: real-time factor (wall seconds / audio seconds) of codec encoding, single file and
batched, for the paper-size codec (recipes/codec/fusecodec_librispeech.yaml's model) and the demo one (mini.yaml).

    .venv/bin/python tools/bench_codec.py [--seconds 10] [--batch 8] [--repeats 3] [--out bench_out/codec.json]

Weights are random (speed does not depend on them); k-means initialisation is off so the first call is not an
outlier. Each number is the best of ``--repeats`` runs after one warm-up. Prints and writes JSON.

``encode_*`` columns time ``Codec.encode`` on equal-length files; ``tokenize_rtf[_bf16]`` time the whole
``seqwin tokenize`` path on ``8 x --batch`` FLAC files of 0.6-1.4 x ``--seconds`` (reading, length-sorted padded
batches, writing codes; best of ``--tokenize-repeats`` after a one-batch warm-up). ``tokenize_padding``: the
fraction of extra (padded) samples those batches encode; it shrinks as a corpus grows and neighbours in length
order get closer.

Also reported: the encoder's arithmetic per second of audio (convolutions, linear layers, (Bi)LSTM, RVQ distances;
``encode_gflop_per_audio_s``) and this machine's fp32 matmul rate (``matmul_gflops``), whose ratio is the lowest
encode RTF the CPU allows at full matmul efficiency (``rtf_floor``). ``*_bf16`` columns: the same encode with
``bf16=True`` (``seqwin tokenize --bf16``), side by side in the same run. The models are prepared as ``seqwin
tokenize`` / ``detokenize`` prepare them (``Codec.fold_for_inference``: weight norm folded; for the bf16 columns
an encoder-only copy with bf16 weights). Writes ``--out`` and a bar plot next to it (``.png``). The heap
setting of ``seqwin tokenize`` (:func:`seqwin.cpu_memory.keep_freed_memory`) is applied as there;
``--system-malloc`` leaves glibc's default, to measure what it gains (run both in turn: the setting cannot be
undone inside one process).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from seqwin.cpu_memory import keep_freed_memory
from seqwin.models.codec import Codec, create_codec
from seqwin.models.codec.seanet import SConv1d
from seqwin.recipes.codec.config import CodecRecipeConfig
from seqwin.training import load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "codec"


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(size: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / _best(lambda: a @ b, repeats) / 1e9


def encode_gflop_per_second(model: Codec, seconds: float = 1.0) -> float:
    """Multiply-adds x 2 of ``model.encode`` per second of audio: conv/linear layers counted by hooks on a real
    forward, the (Bi)LSTM and the RVQ distance matmuls from their shapes."""
    macs = [0]

    def conv(mod: SConv1d, _inp, out: torch.Tensor) -> None:  # either layout: out.numel() = B * C_out * T_out
        macs[0] += out.numel() * mod.conv.in_channels // mod.conv.groups * mod.conv.kernel_size[0]

    def linear(mod: nn.Linear, _inp, out: torch.Tensor) -> None:
        macs[0] += out.numel() * mod.in_features

    def lstm(mod: nn.LSTM, _inp, out: tuple[torch.Tensor, object]) -> None:
        dirs = 2 if mod.bidirectional else 1
        steps = out[0].shape[0] * out[0].shape[1]  # one file, unpadded: (1, frames, dirs * hidden)
        for layer in range(mod.num_layers):
            width = mod.input_size if layer == 0 else dirs * mod.hidden_size
            macs[0] += dirs * 4 * mod.hidden_size * (width + mod.hidden_size) * steps

    # hooks see only what encode() runs (the decoder's layers are not counted)
    # (on SConv1d, not nn.Conv1d: the channels-last stages call conv2d on its weights, not its forward)
    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, SConv1d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, nn.Linear)]
    hooks += [m.register_forward_hook(lstm) for m in model.modules() if isinstance(m, nn.LSTM)]
    cfg = model.cfg
    model.encode(torch.zeros(1, int(seconds * cfg.sample_rate)))
    for hook in hooks:
        hook.remove()
    frames = cfg.frame_rate * seconds
    q = cfg.quantizer
    macs[0] += q.num_quantizers * q.codebook_size * cfg.latent_dim * frames
    return 2 * macs[0] / seconds / 1e9


def _corpus(root: Path, count: int, seconds: float, sample_rate: int) -> tuple[list, list[int]]:
    """``count`` 16-bit FLAC files of 0.6 ... 1.4 x ``seconds`` (uniform; noise: speed does not depend on it)."""
    import soundfile as sf

    from seqwin.data.inputs import collect_inputs

    gen = torch.Generator().manual_seed(0)
    (root / "wav").mkdir()
    lengths = []
    for k in range(count):
        length = int(seconds * sample_rate * (0.6 + 0.8 * torch.rand((), generator=gen).item()))
        lengths.append(length)
        wave = (0.1 * torch.randn(length, generator=gen)).clamp(-1, 1).numpy()
        sf.write(root / "wav" / f"u{k:04d}.flac", wave, sample_rate, subtype="PCM_16")
    return collect_inputs([root / "wav"]), lengths


def padding_fraction(lengths: list[int], batch: int) -> float:
    """Samples encoded beyond the audio when sorted lengths are batched ``batch`` at a time (as tokenize does)."""
    lengths = sorted(lengths)
    groups = [lengths[i: i + batch] for i in range(0, len(lengths), batch)]
    return sum(max(g) * len(g) for g in groups) / sum(lengths) - 1


def _tokenize_rtf(model: Codec, files: list, tmp: Path, batch: int, bf16: bool, repeats: int) -> float:
    """``seqwin tokenize``'s own RTF (reading, length-sorted batches with padding, writing codes), best of
    ``repeats`` after a warm-up on one batch."""
    from seqwin.recipes.codec.tokenize import tokenize

    tag = "bf16" if bf16 else "fp32"
    tokenize(model, files[:batch], tmp / f"warm_{tag}", batch_size=batch, bf16=bf16)
    runs = [tokenize(model, files, tmp / f"{tag}_{k}", batch_size=batch, bf16=bf16) for k in range(repeats)]
    return min(run.wall / run.seconds for run in runs)


def bench(config: str, seconds: float, batch: int, repeats: int, tokenize_repeats: int) -> dict:
    cfg = load_config(CodecRecipeConfig, RECIPES / f"{config}.yaml", ["model.quantizer.kmeans_init=false"]).model
    torch.manual_seed(0)
    model = create_codec(cfg).eval()  # with its decoder: decode RTF is measured too
    gflop = encode_gflop_per_second(model)
    # as seqwin tokenize / detokenize run them: weight norm folded, and the bf16 one with bf16 weights
    model_bf16 = create_codec(cfg, decoder=False)
    keys = model_bf16.state_dict().keys()
    model_bf16.load_state_dict({k: v for k, v in model.state_dict().items() if k in keys})
    model.fold_for_inference()
    model_bf16.fold_for_inference(bf16=True)
    samples = int(seconds * cfg.sample_rate)
    one = 0.1 * torch.randn(1, samples)
    many = 0.1 * torch.randn(batch, samples)
    single = _best(lambda: model.encode(one), repeats)
    batched = _best(lambda: model.encode(many), repeats)
    single_bf16 = _best(lambda: model_bf16.encode(one, bf16=True), repeats)
    batched_bf16 = _best(lambda: model_bf16.encode(many, bf16=True), repeats)
    decode_codes, _ = model.encode(many)
    decode = _best(lambda: model.decode(decode_codes), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        files, lengths = _corpus(Path(tmp), 8 * batch, seconds, cfg.sample_rate)
        tokenize_fp32 = _tokenize_rtf(model, files, Path(tmp), batch, False, tokenize_repeats)
        tokenize_bf16 = _tokenize_rtf(model_bf16, files, Path(tmp), batch, True, tokenize_repeats)
    return {
        "config": config, "bottleneck": cfg.bottleneck, "causal": cfg.causal,
        "generator_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "seconds_per_file": seconds, "batch": batch,
        "encode_rtf_single": single / seconds, "encode_rtf_batched": batched / (batch * seconds),
        "encode_rtf_single_bf16": single_bf16 / seconds, "encode_rtf_batched_bf16": batched_bf16 / (batch * seconds),
        "decode_rtf_batched": decode / (batch * seconds),
        "tokenize_rtf": tokenize_fp32, "tokenize_rtf_bf16": tokenize_bf16, "tokenize_files": len(files),
        "tokenize_padding": round(padding_fraction(lengths, batch), 3),
        "encode_gflop_per_audio_s": round(gflop, 2),
        "encode_gflops_batched": round(gflop * batch * seconds / batched, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["fusecodec_librispeech", "mini"])
    parser.add_argument("--out", type=Path, default=Path("bench_out/codec.json"))
    parser.add_argument("--tokenize-repeats", type=int, default=1,
                        help="runs of the tokenize columns (8 x batch files each)")
    parser.add_argument("--system-malloc", action="store_true", help="glibc's default heap (no keep_freed_memory)")
    args = parser.parse_args()
    heap = "glibc default" if args.system_malloc else ("kept" if keep_freed_memory() else "glibc default")
    gflops = matmul_gflops()
    runs = [bench(c, args.seconds, args.batch, args.repeats, args.tokenize_repeats) for c in args.configs]
    for run in runs:
        run["rtf_floor"] = round(run["encode_gflop_per_audio_s"] / gflops, 3)
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "matmul_gflops": round(gflops, 1), "freed_heap": heap},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    _plot(runs, args.out.with_suffix(".png"))
    print(json.dumps(results, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


COLUMNS = {"encode_rtf_single": "encode, 1 file", "encode_rtf_batched": "encode, batched",
           "encode_rtf_single_bf16": "encode bf16, 1 file", "encode_rtf_batched_bf16": "encode bf16, batched",
           "tokenize_rtf": "seqwin tokenize", "tokenize_rtf_bf16": "seqwin tokenize --bf16",
           "decode_rtf_batched": "decode, batched"}


def _plot(runs: list[dict], png: Path) -> None:
    """One group of bars per config (real-time factor of each column), with a line at the batched target RTF of 0.05."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.2 + 2.6 * len(runs), 4))
    width = 0.8 / len(COLUMNS)
    for k, (key, label) in enumerate(COLUMNS.items()):
        xs = [i + (k - (len(COLUMNS) - 1) / 2) * width for i in range(len(runs))]
        ax.bar(xs, [r[key] for r in runs], width, label=label)
    ax.axhline(0.05, color="k", ls="--", lw=1, label="target RTF 0.05 (batched)")
    ax.set_xticks(range(len(runs)), [f"{r['config']}\n{r['batch']} x {r['seconds_per_file']:g} s" for r in runs])
    ax.set(ylabel="wall s / audio s (lower is faster)", title="codec real-time factor on this CPU")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    main()
