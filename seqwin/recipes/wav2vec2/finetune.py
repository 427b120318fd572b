"""wav2vec 2.0 CTC fine-tuning on letters, from an SSL checkpoint (seqwin, fairseq2, fairseq1 or a Hugging Face
folder) or from scratch.

``seqwin train asr --config recipes/wav2vec2/asr/<name>.yaml [--set key=value ...] OUT``. As in the paper's
recipes the encoder can be frozen for the first ``finetune.freeze_encoder_steps`` steps (only the CTC head
learns; those steps skip the encoder's backward pass) and the conv feature encoder for the whole run;
SpecAugment-style masking of time steps and channels comes from the model config (``use_masking``). The
vocabulary is ``dict.ltr.txt`` of the manifest directory (blank ``<s>`` = 0) and travels with the model.
Outputs as for ``seqwin train ssl``; validation reports dev loss, greedy-decoding WER and CER.
"""

from __future__ import annotations

import copy
import logging
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from seqwin.attention.fairseq2 import collect_aux_losses
from seqwin.data.errors import DataError
from seqwin.data.manifest import CharDictionary
from seqwin.data.pipeline import AudioBatch
from seqwin.errors import UserError
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.config import SSL_FAMILY, SeqwinWav2Vec2AsrConfig, asr_config_from_ssl, asr_presets
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model
from seqwin.recipes.wav2vec2.config import AsrRecipeConfig, check_data_parallel, check_routing_fits
from seqwin.recipes.wav2vec2.data import batch_stream
from seqwin.recipes.wav2vec2.decode import error_rates, greedy_ctc, ids_to_words, letters_to_words
from seqwin.recipes.wav2vec2.train import audio_seconds, check_batches, model_device, start_run
from seqwin.training import StepContext, Trainer, to_yaml

log = logging.getLogger("seqwin.wav2vec2.asr")


def _ctc_forward(model: nn.Module, batch: AudioBatch) -> tuple[Tensor, Tensor, object]:
    batch = batch.to(model_device(model))
    loss, logits, layout = model(batch.waveforms, batch.layout(), batch.targets, batch.target_layout(),
                                 return_logits=True)
    return loss, logits, layout


def build_model(cfg: AsrRecipeConfig, vocab_size: int) -> tuple[SeqwinWav2Vec2AsrConfig, nn.Module]:
    model_cfg = cfg.model.build(asr_presets(), SeqwinWav2Vec2AsrConfig)
    ssl = None
    if cfg.init.ssl_checkpoint is not None:
        ssl = wav2vec2_checkpoint.load(cfg.init.ssl_checkpoint)
        if ssl.family != SSL_FAMILY:
            raise UserError(f"init.ssl_checkpoint: {cfg.init.ssl_checkpoint} is a {ssl.family} model, "
                            "expected a pretrained (SSL) wav2vec2 model")
        model_cfg = asr_config_from_ssl(ssl.config, model_cfg)
        if "attention" not in cfg.model.config:
            model_cfg.attention = copy.deepcopy(ssl.config.attention)
        if ssl.normalize and not cfg.data.normalize:
            log.warning("init.ssl_checkpoint %s was trained on normalized waveforms; data.normalize is false",
                        cfg.init.ssl_checkpoint)
    model_cfg.model.target_vocab_size = vocab_size
    model = create_seqwin_wav2vec2_asr_model(model_cfg)
    if ssl is not None:
        wanted = ("encoder_frontend.", "encoder.", "masker.")
        state = {k: v for k, v in ssl.model.state_dict().items() if k.startswith(wanted)}
        if not model_cfg.model.use_masking:
            state.pop("masker.temporal_mask_embed", None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("final_proj.") for k in missing):
            raise UserError(f"init.ssl_checkpoint: encoder weights do not fit: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
        log.info("encoder initialized from %s (%s, %d tensors)", cfg.init.ssl_checkpoint, ssl.source, len(state))
    return model_cfg, model


def _encoder_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if not name.startswith("final_proj.")]


def run(cfg: AsrRecipeConfig, out_dir: Path) -> dict[str, float]:
    try:
        dictionary = CharDictionary.load(cfg.data.manifest_dir / "dict.ltr.txt")
    except DataError as exc:
        raise UserError(f"data.manifest_dir: {exc}") from None
    symbols = list(dictionary.symbols)
    torch.manual_seed(cfg.trainer.seed)
    model_cfg, model = build_model(cfg, len(symbols))
    check_routing_fits(model_cfg, cfg.data)
    check_data_parallel(model_cfg, cfg.trainer.data_parallel)
    enc = model_cfg.model.encoder_config
    start_run(out_dir, to_yaml(cfg), wav2vec2_checkpoint.model_yaml(model_cfg, symbols))
    if cfg.finetune.freeze_feature_extractor:
        model.encoder_frontend.feature_extractor.requires_grad_(False)
    log.info("wav2vec2 CTC: %.2fM parameters, %d layers x %d dim, %d symbols, attention %s",
             sum(p.numel() for p in model.parameters()) / 1e6, enc.num_encoder_layers, enc.model_dim, len(symbols),
             model_cfg.attention.describe(enc.num_encoder_layers, enc.num_encoder_attn_heads))
    train = cfg.data.dataset(cfg.data.train_split, "ltr")
    valid = cfg.data.dataset(cfg.data.valid_split, "ltr", shuffle=False) if cfg.data.valid_split else None
    trainable = [p for p in _encoder_params(model) if p.requires_grad]
    freeze_steps = cfg.finetune.freeze_encoder_steps

    def before_step(ctx: StepContext) -> None:
        step = ctx.step
        frozen = step < freeze_steps
        if trainable and trainable[0].requires_grad == frozen:
            for p in trainable:
                p.requires_grad_(not frozen)
            log.info("step %d: encoder %s", step, "frozen (training the CTC head only)" if frozen else "unfrozen")

    def step_fn(m: nn.Module, batch: AudioBatch) -> tuple[Tensor, dict, float]:
        loss, _, _ = _ctc_forward(m, batch)
        num_chars = max(1, int(batch.target_lens.sum()))
        loss = loss / num_chars
        aux = collect_aux_losses(m)
        if aux is not None:
            loss = loss + aux
        return loss, {}, audio_seconds(batch)

    def valid_fn(m: nn.Module) -> dict[str, float]:
        total, chars, refs, hyps = 0.0, 0, [], []
        for batch in batch_stream(valid, 0, 0, budget=cfg.data.max_num_frames):
            loss, logits, layout = _ctc_forward(m, batch)
            total += loss.item()
            chars += int(batch.target_lens.sum())
            refs += [letters_to_words(t) for t in batch.texts]
            hyps += [ids_to_words(ids, symbols) for ids in greedy_ctc(logits, layout)]
        rates = error_rates(refs, hyps)
        return {"loss": total / max(1, chars), "wer": rates["wer"], "cer": rates["cer"]}

    trainer = Trainer(
        cfg.trainer, model, out_dir, step_fn=step_fn, unit="audio_s", valid_fn=valid_fn if valid else None,
        before_step=before_step if freeze_steps else None,
        batches=partial(batch_stream, train, budget=cfg.data.max_num_frames),
    )
    check_batches(train, cfg.data, trainer.world_size)
    result = trainer.fit()
    if trainer.rank == 0:
        wav2vec2_checkpoint.save(out_dir / "model.pt", trainer.model, model_cfg, dictionary=symbols,
                                 normalize=cfg.data.normalize)
        log.info("final model: %s", out_dir / "model.pt")
    return result

