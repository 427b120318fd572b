"""``seqwin train codec``: GAN training of the FuseCodec generator with the shared :class:`~seqwin.training.Trainer`.

The trainer owns the generator (the codec: its weights are the checkpoint's ``model``), its AdamW and schedule.
The discriminators, their AdamW and schedule are the trainer's ``extras``: checkpointed and resumed with
everything else, and replicated across ranks by the trainer under torchrun. Each step (HiFi-GAN order): generator
forward -> discriminator update on the detached reconstruction -> generator losses against the updated
discriminators, returned to the trainer, which does the generator update. The discriminators' parameters are
frozen during the generator pass, so the generator's backward never touches them. Output: ``OUT/config.yaml``,
``checkpoints/``, ``metrics.jsonl``, ``tb/``, teacher cache, and ``OUT/codec.pt`` (the exported generator) at
the end.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import torch
from torch import Tensor, nn

from seqwin.data.audio import read_audio
from seqwin.models.codec import Codec, codebook_stats, create_codec
from seqwin.models.codec import checkpoint as codec_checkpoint
from seqwin.models.codec.discriminators import create_discriminators
from seqwin.models.codec.losses import (
    MultiScaleMelLoss,
    context_align_loss,
    discriminator_loss,
    distill_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    generator_total,
    waveform_l1,
)
from seqwin.recipes.codec.config import CodecRecipeConfig
from seqwin.recipes.codec.data import SegmentBatch, SegmentDataset, read_split
from seqwin.recipes.codec.metrics import PocketSphinx, mean_or_none, normalize_words, pesq_wb, stoi, word_error_rate
from seqwin.recipes.codec.teacher_features import TeacherFeatures, teacher_batch_to
from seqwin.training import StepContext, Trainer, to_yaml
from seqwin.training.checks import check_batches_per_step
from seqwin.training.distributed import create_gangs, pick_device
from seqwin.training.trainer import create_adamw
from seqwin.training.trainer_config import lr_factor

log = logging.getLogger(__name__)


def si_snr(estimate: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SNR in dB per row of ``(B, T)`` (zero-mean signals)."""
    estimate = estimate - estimate.mean(-1, keepdim=True)
    target = target - target.mean(-1, keepdim=True)
    scale = (estimate * target).sum(-1, keepdim=True) / (target.pow(2).sum(-1, keepdim=True) + eps)
    projection = scale * target
    noise = estimate - projection
    return 10 * torch.log10((projection.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


class GanStep:
    """The step function: discriminator update inside, generator loss out."""

    def __init__(self, cfg: CodecRecipeConfig, disc: nn.Module, d_opt: torch.optim.Optimizer,
                 d_sched: torch.optim.lr_scheduler.LRScheduler, teachers: TeacherFeatures, device: torch.device,
                 window: int) -> None:
        self.cfg, self.disc, self.d_opt, self.d_sched = cfg, disc, d_opt, d_sched
        self.disc_run = disc  # what the discriminator update calls: the trainer's DDP-wrapped one under torchrun
        self.teachers, self.device = teachers, device
        self.mel = MultiScaleMelLoss(cfg.model.sample_rate, cfg.mel.ffts, cfg.mel.n_mels).to(device)
        self.step = 0
        self.recent_codes: deque[Tensor] = deque(maxlen=window)
        self.d_skipped = 0

    def before_step(self, ctx: StepContext) -> None:
        self.step = ctx.step
        # Only the discriminator update goes through DDP; the generator pass uses the bare module (frozen).
        self.disc_run = ctx.extras["discriminator"]

    def _teacher_terms(self, out, model_cfg, tb) -> dict[str, Tensor]:
        if out.teacher_pred is None or tb is None:
            return {}
        mask = torch.arange(out.teacher_pred.shape[1], device=self.device)[None] < out.frame_lens[:, None]
        if model_cfg.variant == "distill":
            teachers = []
            if tb.semantic is not None:
                teachers.append((tb.semantic, None))
            if tb.context is not None:
                teachers.append((tb.context, tb.context_present))
            return {"distill": distill_loss(out.teacher_pred, mask, teachers)}
        return {"distill": context_align_loss(out.teacher_pred, mask, tb.context, tb.context_present)}

    def __call__(self, model: nn.Module, batch: SegmentBatch) -> tuple[Tensor, dict[str, float], int]:
        cfg = self.cfg
        wav = batch.waveforms.to(self.device)
        lens = batch.seq_lens.to(self.device)
        frames = -(-wav.shape[1] // cfg.model.hop_length)
        tb = teacher_batch_to(self.teachers.batch(batch, frames), self.device)
        out = model(wav, lens, tb)
        sample_mask = (torch.arange(wav.shape[1], device=self.device)[None] < lens[:, None]).to(wav.dtype)
        recon = out.recon * sample_mask
        terms = {"waveform": waveform_l1(recon, wav), "mel": self.mel(recon, wav), "commitment": out.commitment,
                 **self._teacher_terms(out, cfg.model, tb)}
        values: dict[str, float] = {}
        if self.step >= cfg.adversarial_start_step:
            values["d_loss"] = self._update_discriminator(wav, recon.detach())
            self.disc.requires_grad_(False)
            fake_logits, fake_feats = self.disc(recon)
            with torch.no_grad():
                _, real_feats = self.disc(wav)
            self.disc.requires_grad_(True)
            terms["adversarial"] = generator_adversarial_loss(fake_logits)
            terms["feature_matching"] = feature_matching_loss(real_feats, fake_feats)
        weights = cfg.losses.at_step(self.step)
        loss = generator_total(terms, weights)
        values.update({name: float(value.detach()) for name, value in terms.items()})
        if cfg.losses.mel_start is not None:
            values["mel_weight"] = weights.mel
        self.recent_codes.append(out.codes.detach().cpu())
        stats = codebook_stats(torch.cat([c.transpose(0, 1).reshape(c.shape[1], -1) for c in self.recent_codes],
                                         dim=1), cfg.model.quantizer.codebook_size)
        values.update({f"usage_q{i + 1}": u for i, u in enumerate(stats["usage"])})
        return loss, values, int(lens.sum())

    def _update_discriminator(self, real: Tensor, fake: Tensor) -> float:
        real_logits, _ = self.disc_run(real)
        fake_logits, _ = self.disc_run(fake)
        loss = discriminator_loss(real_logits, fake_logits)
        self.d_opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.d_skipped += 1
            log.warning("step %d: non-finite discriminator loss, discriminator update skipped (%d so far)",
                        self.step, self.d_skipped)
            return float("nan")
        loss.backward()
        clip = self.cfg.trainer.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), clip)
        if torch.isfinite(norm):
            self.d_opt.step()
            self.d_sched.step()
        self.d_opt.zero_grad(set_to_none=True)  # no discriminator gradient may leak into the generator's step
        return float(loss.detach())


def latent_offset(z: Tensor) -> float:
    """``|mean_t z_t| / rms_t |z_t - mean|`` of one utterance's latent ``(F, D)``: how far the whole cloud of frames
    sits from the origin compared with its spread."""
    mean = z.mean(0)
    spread = (z - mean).pow(2).sum(-1).mean().sqrt()
    return float(mean.norm() / spread.clamp_min(1e-8))


@torch.no_grad()
def validate_codec(model: Codec, waves: list[Tensor], mel: MultiScaleMelLoss, texts: list[str] | None = None,
                   original_hyps: list[str] | None = None) -> dict[str, float]:
    """Reconstruction metrics over whole utterances (eval mode: all quantizers, no codebook updates): mel distance,
    waveform L1, SI-SNR, STOI and wide-band PESQ, so the metrics file holds their curves over the steps; with
    ``texts`` (the references), also pocketsphinx's WER on the originals and on the reconstructions;
    ``original_hyps``: pocketsphinx's transcripts of ``waves``, when the caller decoded them once for every
    validation (the originals do not change)."""
    device = next(model.parameters()).device
    sample_rate = model.cfg.sample_rate
    totals = {"mel_distance": 0.0, "waveform_l1": 0.0, "si_snr": 0.0, "rms_ratio": 0.0, "latent_offset": 0.0}
    codes, stois, pesqs, recons = [], [], [], []
    for wave in waves:
        x = wave.to(device)[None]
        out = model(x)
        totals["mel_distance"] += float(mel(out.recon, x))
        totals["waveform_l1"] += float(waveform_l1(out.recon, x))
        totals["si_snr"] += float(si_snr(out.recon, x)[0])
        # collapse diagnostics: an output far quieter than the input (rms_ratio << 1), and a latent whose
        # time-constant part dwarfs its frame-to-frame variation (latent_offset >> 1), which RVQ maps to one code
        totals["rms_ratio"] += float(out.recon.std() / x.std().clamp_min(1e-8))
        totals["latent_offset"] += latent_offset(out.latent[0])
        codes.append(out.codes[0].cpu())
        ref, recon = wave.numpy(), out.recon[0].float().cpu().numpy()
        stois.append(stoi(ref, recon, sample_rate))
        pesqs.append(pesq_wb(ref, recon, sample_rate))
        recons.append(recon)
    values = {k: v / max(1, len(waves)) for k, v in totals.items()}
    for name, scores in (("stoi", stois), ("pesq", pesqs)):
        mean = mean_or_none(scores)
        if mean is not None:
            values[name] = mean
    if texts is not None:
        asr = PocketSphinx(sample_rate)
        if original_hyps is None:
            original_hyps = [asr(w.numpy()) for w in waves]
        for name, hyps in (("wer_original", original_hyps), ("wer_recon", [asr(r) for r in recons])):
            wer = word_error_rate(texts, hyps)
            if wer is not None:  # None: no valid utterance has a non-empty transcript
                values[name] = wer
    if codes:
        stats = codebook_stats(torch.cat(codes, dim=1), model.cfg.quantizer.codebook_size)
        for i, (u, p) in enumerate(zip(stats["usage"], stats["perplexity"], strict=True)):
            values[f"usage_q{i + 1}"], values[f"perplexity_q{i + 1}"] = u, p
    return values


def train_codec(cfg: CodecRecipeConfig, out_dir: Path) -> dict[str, float]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    # Under torchrun, join the process group before building the codec: its quantizer decides at construction
    # whether to all-reduce its EMA codebook statistics across ranks (the Trainer reuses the group).
    world_size = create_gangs(pick_device(cfg.trainer.device)).root.size
    torch.manual_seed(cfg.trainer.seed)
    m = cfg.model
    model = create_codec(m)
    disc = create_discriminators(cfg.discriminator)
    log.info("codec: %.2f M generator / %.2f M discriminator parameters, %d Hz, hop %d (%.1f Hz frames), "
             "%d x %d codes (%.0f bps), variant %s", _millions(model), _millions(disc), m.sample_rate,
             m.hop_length, m.frame_rate, m.quantizer.num_quantizers, m.quantizer.codebook_size, m.bitrate, m.variant)
    d = cfg.data
    with_text = cfg.teachers.transcripts == "data"
    train_utts = read_split(d.manifest_dir, d.train_split, with_text=with_text, sample_rate=m.sample_rate,
                            min_samples=max(1, int(d.min_seconds * m.sample_rate)), strict=d.strict)
    check_batches_per_step(len(train_utts), d.batch_size, world_size, "data.batch_size",
                           f"utterances of {d.train_split}", "lower data.batch_size")
    valid_waves, valid_texts, original_hyps = [], None, None
    if d.valid_utterances:
        valid_utts = read_split(d.manifest_dir, d.valid_split, with_text=d.valid_asr, sample_rate=m.sample_rate,
                                strict=d.strict)[: d.valid_utterances]
        # the WER references are whole transcripts, so the utterances are scored whole (valid_max_seconds
        # crops only when the recognizer is off)
        limit = None if d.valid_asr else int(d.valid_max_seconds * m.sample_rate)
        valid_waves = [torch.from_numpy(read_audio(u.path, sample_rate=m.sample_rate)[:limit]) for u in valid_utts]
        if d.valid_asr:
            valid_texts = [normalize_words(u.text or "") for u in valid_utts]
            asr = PocketSphinx(m.sample_rate)
            original_hyps = [asr(w.numpy()) for w in valid_waves]
    teachers = TeacherFeatures(cfg, cfg.teachers.cache_dir or out_dir / "teacher_cache")
    teachers.prepare(train_utts)

    device = pick_device(cfg.trainer.device)
    t = cfg.trainer
    d_opt = create_adamw(disc.parameters(), t, device, lr=cfg.discriminator_lr or t.lr)
    d_sched = torch.optim.lr_scheduler.LambdaLR(d_opt, lambda s: lr_factor(s, t))
    step = GanStep(cfg, disc, d_opt, d_sched, teachers, device, window=t.log_every)
    dataset = SegmentDataset(train_utts, segment_samples=int(d.segment_seconds * m.sample_rate) // m.hop_length
                             * m.hop_length, hop=m.hop_length, batch_size=d.batch_size, sample_rate=m.sample_rate,
                             seed=d.seed)
    mel_metric = MultiScaleMelLoss(m.sample_rate, cfg.mel.ffts, cfg.mel.n_mels).to(device)
    trainer = Trainer(
        t, model, out_dir, step_fn=step, batches=dataset.batches,
        valid_fn=(lambda model: validate_codec(model, valid_waves, mel_metric, valid_texts, original_hyps))
        if valid_waves else None,
        extras={"discriminator": disc, "d_optimizer": d_opt, "d_scheduler": d_sched},
        before_step=step.before_step, unit="samples",
    )
    result = trainer.fit()
    if trainer.rank == 0:
        path = codec_checkpoint.save(out_dir / codec_checkpoint.EXPORT_NAME, trainer.model)
        log.info("codec exported to %s", path)
    return result


def _millions(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6
