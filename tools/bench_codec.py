"""Tokenizer speed on the CPU: real-time factor (wall seconds / audio seconds) of codec encoding, single file and
batched, for the paper-size codec (recipes/codec/fusecodec_librispeech.yaml's model) and the demo one (mini.yaml).

    .venv/bin/python tools/bench_codec.py [--seconds 10] [--batch 8] [--repeats 3] [--out bench_out/codec.json]

Weights are random (speed does not depend on them); k-means initialisation is off so the first call is not an
outlier. Each number is the best of ``--repeats`` runs after one warm-up. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from seqwin.models.codec import create_codec
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


def bench(config: str, seconds: float, batch: int, repeats: int) -> dict:
    cfg = load_config(CodecRecipeConfig, RECIPES / f"{config}.yaml", ["model.quantizer.kmeans_init=false"]).model
    torch.manual_seed(0)
    model = create_codec(cfg).eval()
    samples = int(seconds * cfg.sample_rate)
    one = 0.1 * torch.randn(1, samples)
    many = 0.1 * torch.randn(batch, samples)
    single = _best(lambda: model.encode(one), repeats)
    batched = _best(lambda: model.encode(many), repeats)
    decode_codes, _ = model.encode(many)
    decode = _best(lambda: model.decode(decode_codes), repeats)
    return {
        "config": config, "bottleneck": cfg.bottleneck, "causal": cfg.causal,
        "generator_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "seconds_per_file": seconds, "batch": batch,
        "encode_rtf_single": single / seconds, "encode_rtf_batched": batched / (batch * seconds),
        "decode_rtf_batched": decode / (batch * seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["fusecodec_librispeech", "mini"])
    parser.add_argument("--out", type=Path, default=Path("bench_out/codec.json"))
    args = parser.parse_args()
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "runs": [bench(c, args.seconds, args.batch, args.repeats) for c in args.configs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
