"""wav2vec 2.0 self-supervised pretraining: masked contrastive prediction of quantized features + codebook
diversity (+ feature penalty for the conv frontend), on any manifest, with the encoder attention from the config.

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
from torch import Tensor, nn

from seqwin.attention.fairseq2 import collect_aux_losses
from seqwin.data.pipeline import AudioBatch
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.config import SeqwinWav2Vec2Config, ssl_presets
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_model
from seqwin.recipes.wav2vec2.config import SslRecipeConfig, check_data_parallel, check_routing_fits
from seqwin.recipes.wav2vec2.data import batch_stream
from seqwin.recipes.wav2vec2.train import audio_seconds, check_batches, model_device, start_run
from seqwin.training import StepContext, Trainer, to_yaml

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


def run(cfg: SslRecipeConfig, out_dir: Path) -> dict[str, float]:
    model_cfg = cfg.model.build(ssl_presets(), SeqwinWav2Vec2Config)
    check_routing_fits(model_cfg, cfg.data)
    check_data_parallel(model_cfg, cfg.trainer.data_parallel)
    enc = model_cfg.model.encoder_config
    start_run(out_dir, to_yaml(cfg), wav2vec2_checkpoint.model_yaml(model_cfg))
    torch.manual_seed(cfg.trainer.seed)
    model = create_seqwin_wav2vec2_model(model_cfg)
    log.info("wav2vec2 SSL: %.2fM parameters, %d layers x %d dim, %s frontend, attention %s",
             sum(p.numel() for p in model.parameters()) / 1e6, enc.num_encoder_layers, enc.model_dim,
             model_cfg.frontend.kind, model_cfg.attention.describe(enc.num_encoder_layers,
                                                                    enc.num_encoder_attn_heads))
    train = cfg.data.dataset(cfg.data.train_split, None)
    valid = cfg.data.dataset(cfg.data.valid_split, None, shuffle=False) if cfg.data.valid_split else None
    diversity, penalty = cfg.loss.diversity_weight, _penalty_weight(cfg, model_cfg)
    current_step = [0]

    def before_step(ctx: StepContext) -> None:
        current_step[0] = ctx.step

    def step_fn(m: nn.Module, batch: AudioBatch) -> tuple[Tensor, dict, float]:
        # The Gumbel temperature follows optimizer steps (as fairseq's set_num_updates), not forward passes:
        # every micro-batch of a step (update_freq > 1) gets the same temperature, as every rank's does.
        model.quantizer.num_updates.fill_(current_step[0])
        loss, values, _ = _forward(m, batch, diversity, penalty)
        aux = collect_aux_losses(m)
        if aux is not None:  # routing commitment losses
            loss = loss + aux
        return loss, values, audio_seconds(batch)

    def valid_fn(m: nn.Module) -> dict[str, float]:
        totals, count = {"loss": 0.0, "contrastive": 0.0, "accuracy": 0.0}, 0
        # Fixed masks and distractors: validation numbers comparable across steps and runs.
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            for batch in batch_stream(valid, 0, 0, budget=cfg.data.max_num_frames):
                loss, values, n = _forward(m, batch, diversity, penalty)
                totals["loss"] += loss.item() * n
                totals["contrastive"] += values["contrastive"] * n
                totals["accuracy"] += values["accuracy"] * n
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
        wav2vec2_checkpoint.save(out_dir / "model.pt", trainer.model, model_cfg)
        log.info("final model: %s", out_dir / "model.pt")
    return result

