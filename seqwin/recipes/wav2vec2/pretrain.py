"""wav2vec 2.0 self-supervised pretraining, on any manifest, with the encoder attention from the config:
``loss.kind: contrastive`` (the paper's masked contrastive prediction of quantized features + codebook diversity,
+ feature penalty for the conv frontend) or ``units`` (masked prediction of k-means units of MFCCs, HuBERT's first
iteration; :mod:`seqwin.models.wav2vec2.units`).

``seqwin train ssl --config recipes/wav2vec2/ssl/<name>.yaml [--set key=value ...] OUT``. Outputs in ``OUT``:
``config.yaml``, ``model.yaml``, ``checkpoints/step_*.pt``, ``metrics.jsonl``, ``tb/``, and ``model.pt`` (the
final model in seqwin format, the input of ``seqwin train asr`` via ``init.ssl_checkpoint``). Re-running the
same command resumes.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from seqwin.attention.fairseq2 import collect_aux_losses
from seqwin.data.pipeline import AudioBatch
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.config import SeqwinWav2Vec2Config, ssl_presets
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_model
from seqwin.models.wav2vec2.units import NUM_CEPS, UnitPredictionModel, fit_kmeans, mfcc_of_logmel
from seqwin.recipes.wav2vec2.config import SslRecipeConfig, check_data_parallel, check_routing_fits
from seqwin.recipes.wav2vec2.data import batch_stream
from seqwin.recipes.wav2vec2.train import audio_seconds, check_batches, model_device, start_run
from seqwin.training import StepContext, Trainer, to_yaml
from seqwin.training.config import ConfigError

log = logging.getLogger("seqwin.wav2vec2.ssl")


def _penalty_weight(cfg: SslRecipeConfig, model_cfg: SeqwinWav2Vec2Config) -> float:
    if cfg.loss.features_penalty_weight is not None:
        return cfg.loss.features_penalty_weight
    return 0.0 if model_cfg.frontend.kind == "logmel" else 10.0


def _forward(model: nn.Module, batch: AudioBatch, diversity: float, penalty: float) -> tuple[Tensor, dict, int]:
    batch = batch.to(model_device(model))
    loss, output = model(batch.waveforms, batch.layout(), diversity_weight=diversity,
                         features_penalty_weight=penalty)
    # fairseq normalizes by the number of masked (predicted) frames
    n = max(1, output.num_targets)
    correct = (output.logits.argmax(-1) == 0) & torch.isfinite(output.logits[..., 0])
    values = {
        "contrastive": loss.contrastive.item() / n,
        "diversity": loss.diversity.item() / n,
        "accuracy": correct.float().mean().item(),
        "code_ppl": output.quantizer_output.code_perplexity.item(),
        "prob_ppl": output.quantizer_output.prob_perplexity.item(),
        "temp": float(output.quantizer_output.temperature),
    }
    return loss.aggregate / n, values, n


KMEANS_MAX_FRAMES = 200_000
"""Frames the unit k-means is fitted on: the training split's first shuffled batches up to this many (an hour or
two of audio: enough for 100-500 clusters, and a large corpus is not read whole before the first step)."""


def _forward_units(model: nn.Module, batch: AudioBatch) -> tuple[Tensor, dict, int]:
    batch = batch.to(model_device(model))
    out = model(batch.waveforms, batch.layout())
    n = max(1, out.num_targets)
    return out.loss / n, {"units_ce": out.loss.item() / n, "accuracy": out.correct.item() / n}, n


def fit_units(model: nn.Module, train, cfg: SslRecipeConfig, num_mel_bins: int) -> Tensor:
    """k-means centroids of the training split's MFCC frames (``loss.kind: units``). Every rank fits the same
    ones: the batches and the k-means seed are the same everywhere."""
    frontend = model.encoder_frontend.eval()  # no training-time augmentation in the features the units come from
    chunks, total = [], 0
    with torch.no_grad():
        for batch in batch_stream(train, 0, 0, budget=cfg.data.max_num_frames):
            _, layout, raw = frontend.extract_features(batch.waveforms, batch.layout())
            mfcc = mfcc_of_logmel(raw, num_mel_bins)
            lens = layout.seq_lens if layout.padded else [mfcc.shape[1]] * len(mfcc)
            chunks += [row[:int(n)] for row, n in zip(mfcc, lens, strict=True)]
            total += sum(int(n) for n in lens)
            if total >= KMEANS_MAX_FRAMES:
                break
    frontend.train()
    points = torch.cat(chunks)[:KMEANS_MAX_FRAMES] if chunks else torch.zeros(0)
    if len(points) < cfg.loss.num_units:
        raise ConfigError(f"loss.num_units ({cfg.loss.num_units}) exceeds the {len(points)} frames of the training "
                          "split")
    centroids = fit_kmeans(points, cfg.loss.num_units, seed=cfg.trainer.seed)
    log.info("units: %d k-means clusters of %d MFCC frames of the training split", len(centroids), len(points))
    return centroids


def _resuming(out_dir: Path, cfg: SslRecipeConfig) -> bool:
    """Whether this run resumes from checkpoints, after checking that they were trained with the same
    ``loss.kind`` and ``loss.num_units`` (another head would not fit their weights). The run's ``config.yaml`` says
    how they were trained: read before ``start_run`` rewrites it, and without loading a checkpoint twice."""
    if not any((out_dir / "checkpoints").glob("step_*.pt")):
        return False
    path, saved = out_dir / "config.yaml", {}
    if path.is_file():
        try:
            saved = (yaml.safe_load(path.read_text()) or {}).get("loss") or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc}); it says how the checkpoints were trained") from None
    kind = saved.get("kind", "contrastive")  # runs from before loss.kind existed were contrastive
    if kind != cfg.loss.kind:
        raise ConfigError(f"loss.kind: {out_dir} holds checkpoints of a loss.kind {kind} run; resume with it or use "
                          "a new output directory")
    if kind == "units" and saved.get("num_units") != cfg.loss.num_units:
        raise ConfigError(f"loss.num_units: {out_dir} holds checkpoints trained with {saved.get('num_units')} units; "
                          "resume with them or use a new output directory")
    return True


def run(cfg: SslRecipeConfig, out_dir: Path) -> dict[str, float]:
    model_cfg = cfg.model.build(ssl_presets(), SeqwinWav2Vec2Config)
    check_routing_fits(model_cfg, cfg.data)
    check_data_parallel(model_cfg, cfg.trainer.data_parallel)
    units = cfg.loss.kind == "units"
    if units and model_cfg.frontend.kind != "logmel":
        raise ConfigError("loss.kind units clusters the log-mel frontend's features: set model.config.frontend.kind "
                          "logmel, or use loss.kind contrastive")
    enc = model_cfg.model.encoder_config
    resuming = _resuming(out_dir, cfg)  # before start_run: a refused resume leaves the run's files as they were
    start_run(out_dir, to_yaml(cfg), wav2vec2_checkpoint.model_yaml(model_cfg))
    torch.manual_seed(cfg.trainer.seed)
    wav2vec2 = create_seqwin_wav2vec2_model(model_cfg)
    log.info("wav2vec2 SSL (%s): %.2fM parameters, %d layers x %d dim, %s frontend, attention %s", cfg.loss.kind,
             sum(p.numel() for p in wav2vec2.parameters()) / 1e6, enc.num_encoder_layers, enc.model_dim,
             model_cfg.frontend.kind, model_cfg.attention.describe(enc.num_encoder_layers,
                                                                    enc.num_encoder_attn_heads))
    train = cfg.data.dataset(cfg.data.train_split, None)
    valid = cfg.data.dataset(cfg.data.valid_split, None, shuffle=False) if cfg.data.valid_split else None
    model: nn.Module = wav2vec2
    if units:
        num_mel_bins = model_cfg.frontend.num_mel_bins
        if resuming:  # placeholders: the checkpoint's units come back with its weights
            centroids = torch.zeros(cfg.loss.num_units, model_cfg.frontend.stack * NUM_CEPS)
        else:
            centroids = fit_units(wav2vec2, train, cfg, num_mel_bins)
        model = UnitPredictionModel(wav2vec2, enc.model_dim, num_mel_bins, centroids)
    diversity, penalty = cfg.loss.diversity_weight, _penalty_weight(cfg, model_cfg)
    current_step = [0]

    def before_step(ctx: StepContext) -> None:
        current_step[0] = ctx.step

    def forward(m: nn.Module, batch: AudioBatch) -> tuple[Tensor, dict, int]:
        return _forward_units(m, batch) if units else _forward(m, batch, diversity, penalty)

    def step_fn(m: nn.Module, batch: AudioBatch) -> tuple[Tensor, dict, float]:
        if not units:
            # The Gumbel temperature follows optimizer steps (as fairseq's set_num_updates), not forward passes:
            # every micro-batch of a step (update_freq > 1) gets the same temperature, as every rank's does.
            wav2vec2.quantizer.num_updates.fill_(current_step[0])
        loss, values, _ = forward(m, batch)
        aux = collect_aux_losses(m)
        if aux is not None:  # routing commitment losses
            loss = loss + aux
        return loss, values, audio_seconds(batch)

    def valid_fn(m: nn.Module) -> dict[str, float]:
        names = ("loss", "units_ce", "accuracy") if units else ("loss", "contrastive", "accuracy")
        totals, count = dict.fromkeys(names, 0.0), 0
        # Fixed masks and distractors: validation numbers comparable across steps and runs.
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            for batch in batch_stream(valid, 0, 0, budget=cfg.data.max_num_frames):
                loss, values, n = forward(m, batch)
                totals["loss"] += loss.item() * n
                for name in names[1:]:
                    totals[name] += values[name] * n
                count += n
        return {k: v / max(1, count) for k, v in totals.items()}

    trainer = Trainer(
        cfg.trainer, model, out_dir, step_fn=step_fn, unit="audio_s", valid_fn=valid_fn if valid else None,
        before_step=before_step,
        batches=partial(batch_stream, train, budget=cfg.data.max_num_frames),
    )
    check_batches(train, cfg.data, trainer.world_size)
    result = trainer.fit()
    if trainer.rank == 0:
        final = trainer.model.wav2vec2 if units else trainer.model
        wav2vec2_checkpoint.save(out_dir / "model.pt", final, model_cfg)
        log.info("final model: %s", out_dir / "model.pt")
    return result
