"""``seqwin train lm``: train a long-context LM on packed sequences with the shared trainer.

``OUT/`` receives ``config.yaml`` (the resolved config, vocabulary size included), the tokenizer
(``tokenizer.json`` [+ ``tokenizer.model``]), token caches (``tokens/``), ``checkpoints/``, ``metrics.jsonl``,
``tb/`` and, once training ends, ``model.pt`` (the LM file: model and tokenizer, see
:mod:`seqwin.models.lm.checkpoint`). Re-running the same command resumes; a changed model/tokenizer/data
section is refused (use a new OUT). The loss is the mean next-token cross entropy plus the routing layers'
commitment losses.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import BatchLayout
from torch import Tensor

from seqwin.attention.fairseq2 import collect_aux_losses
from seqwin.errors import UserError
from seqwin.models.lm import checkpoint as lm_checkpoint
from seqwin.models.lm.factory import count_parameters, create_lm_model
from seqwin.models.lm.tokenizer import (
    ByteTokenizer,
    CodeTokenizer,
    Tokenizer,
    load_tokenizer,
    train_sentencepiece,
)
from seqwin.recipes.lm.config import LMRecipeConfig
from seqwin.recipes.lm.data import PackedBatches, load_tokens, split_source
from seqwin.recipes.lm.scoring import score_stream
from seqwin.training import Trainer, load_config, to_yaml
from seqwin.training.config import to_dict
from seqwin.training.distributed import create_gangs, pick_device

log = logging.getLogger("seqwin.lm")

CONFIG_NAME = "config.yaml"
_FROZEN_SECTIONS = ("model", "tokenizer", "data")


def prepare_tokenizer(cfg: LMRecipeConfig, out: Path) -> Tokenizer:
    """The tokenizer in ``out`` (kept if present), else copied from ``tokenizer.model`` or trained/created."""
    tc = cfg.tokenizer
    if (out / "tokenizer.json").exists():
        return load_tokenizer(out)
    if tc.model is not None:
        tok = load_tokenizer(tc.model)
        if tok.kind != tc.kind:
            raise UserError(f"{tc.model}: holds a {tok.kind} tokenizer but tokenizer.kind is {tc.kind}")
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer.vocab"):
            if (tc.model / name).exists():
                shutil.copyfile(tc.model / name, out / name)
        return load_tokenizer(out)
    if tc.kind == "byte":
        tok = ByteTokenizer()
    elif tc.kind == "codes":
        tok = CodeTokenizer(tc.codebooks, tc.codebook_size)
    else:
        source = split_source(cfg.data.dir, "train", cfg.data.format)
        log.info("training a %d-piece SentencePiece %s model on %s", tc.vocab_size, tc.model_type, source)
        return train_sentencepiece([source], out, vocab_size=tc.vocab_size, model_type=tc.model_type,
                                   max_sentences=tc.max_sentences)
    tok.save(out)
    return tok


def _resolve(cfg: LMRecipeConfig, tok: Tokenizer) -> LMRecipeConfig:
    if cfg.model.vocab_size not in (0, tok.vocab_size):
        raise UserError(f"model.vocab_size is {cfg.model.vocab_size} but the tokenizer has {tok.vocab_size} ids "
                        "(leave it 0 to take the tokenizer's)")
    return replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size))


def _check_same_run(saved: Path, cfg: LMRecipeConfig) -> None:
    old = to_dict(load_config(LMRecipeConfig, saved))
    new = to_dict(cfg)
    for section in _FROZEN_SECTIONS:
        if old[section] != new[section]:
            changed = sorted(k for k in set(old[section]) | set(new[section])
                             if old[section].get(k) != new[section].get(k))
            raise UserError(f"{saved.parent} was trained with a different {section} config "
                            f"({', '.join(f'{section}.{k}' for k in changed)}); use a new output directory")


def lm_loss(model: TransformerLM, batch: Tensor) -> tuple[Tensor, dict[str, float], int]:
    """Mean next-token cross entropy (+ routing commitment) of a ``(batch, len + 1)`` token batch."""
    batch = batch.to(next(model.parameters()).device)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    ce = model(inputs, BatchLayout.of(inputs), targets, reduction="sum") / targets.numel()
    aux = collect_aux_losses(model)
    values = {"ce": ce.item()}
    if aux is not None:
        values["routing_aux"] = aux.item()
        return ce + aux, values, targets.numel()
    return ce, values, targets.numel()


def run_train(cfg: LMRecipeConfig, out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    # Under torchrun, rank 0 writes the tokenizer, config and token caches while the others wait, then they
    # read them: no rank reads a half-written file (the Trainer reuses this process group).
    root = create_gangs(pick_device(cfg.trainer.device)).root
    if root.rank != 0:
        root.barrier()
    tok = prepare_tokenizer(cfg, out)
    cfg = _resolve(cfg, tok)
    saved = out / CONFIG_NAME
    if saved.exists():
        _check_same_run(saved, cfg)
    if root.rank == 0:
        saved.write_text(to_yaml(cfg))
    train_tokens = load_tokens(cfg.data.dir, "train", cfg.data.format, tok, out)
    valid_tokens = load_tokens(cfg.data.dir, cfg.data.valid_split, cfg.data.format, tok, out)
    if root.rank == 0:
        root.barrier()
    if cfg.data.valid_tokens:
        valid_tokens = valid_tokens[: cfg.data.valid_tokens + 1]

    torch.manual_seed(cfg.trainer.seed)  # the same initial weights for the same config
    model = create_lm_model(cfg.model)
    specs = ", ".join(f"{s.kind}" + (f"{s.window}" if s.kind in ("local", "mixed") else "")
                      for s in cfg.model.layer_specs())
    log.info("LM: %d parameters, %d layers [%s], vocab %d; train %d tokens, valid %d", count_parameters(model),
             cfg.model.num_layers, specs, tok.vocab_size, train_tokens.size, valid_tokens.size)

    def batches(epoch: int, skip: int, *, rank: int, world_size: int):
        return PackedBatches(train_tokens, cfg.data.seq_len, cfg.data.batch_size, cfg.trainer.seed, rank,
                             world_size)(epoch, skip)

    def valid(model: TransformerLM) -> dict[str, float]:
        nll, count = score_stream(model, valid_tokens, context=cfg.data.seq_len, stride=cfg.data.seq_len,
                                  batch_size=cfg.data.batch_size)
        return {"loss": nll / count, "ppl": math.exp(nll / count), "tokens": float(count)}

    PackedBatches(train_tokens, cfg.data.seq_len, cfg.data.batch_size, cfg.trainer.seed, root.rank,
                  root.size).check_fits()
    trainer = Trainer(cfg.trainer, model, out, step_fn=lm_loss, batches=batches, valid_fn=valid, unit="tokens")
    result = trainer.fit()
    if trainer.rank == 0:
        path = lm_checkpoint.save(out / lm_checkpoint.EXPORT_NAME, trainer.model, cfg.model, tokenizer=tok,
                                  step=trainer.step)
        log.info("final model: %s", path)
    return result


def load_trained(out: Path, *, checkpoint: Path | None = None, device: str = "auto",
                 min_seq_len: int = 0) -> tuple[LMRecipeConfig, Tokenizer, TransformerLM, int]:
    """``(config, tokenizer, model in eval mode, step)`` from a ``seqwin train lm`` directory (the model as
    :func:`seqwin.models.lm.checkpoint.load` finds it there, or from ``checkpoint``)."""
    saved = Path(out) / CONFIG_NAME
    if not saved.exists():
        raise UserError(f"{out}: no {CONFIG_NAME}; not a `seqwin train lm` output directory")
    loaded = lm_checkpoint.load(out, checkpoint=checkpoint, min_seq_len=min_seq_len)
    cfg = load_config(LMRecipeConfig, saved)
    loaded.model.to(pick_device(device))
    return cfg, loaded.tokenizer, loaded.model, loaded.step


def num_bytes(tok: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 bytes that ``ids`` decode to (0 for codes, which have no bytes)."""
    if isinstance(tok, CodeTokenizer):
        return 0
    return len(tok.decode(ids.tolist()).encode("utf-8"))
