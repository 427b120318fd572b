"""``seqwin import hf``: a Hugging Face ``transformers`` wav2vec2 folder -> a seqwin model file (dense attention).

    seqwin import hf wav2vec2-xls-r-300m/ xlsr.pt        Wav2Vec2ForPreTraining or Wav2Vec2Model -> SSL model
    seqwin import hf wav2vec2-base-960h/ base960h.pt     Wav2Vec2ForCTC -> CTC model with its vocabulary

DIR is what `save_pretrained` writes: config.json, model.safetensors or pytorch_model.bin (sharded or not), and
for CTC models vocab.json, tokenizer_config.json, preprocessor_config.json. Nothing is downloaded (fetch a model
with e.g. `huggingface-cli download facebook/wav2vec2-base-960h --local-dir DIR`).

Post-norm ("base") and layer-norm-first ("large", XLS-R) encoders, group- or layer-normed feature encoders and
either weight-norm naming are read; adapters, activations other than gelu and other model types are refused. A
CTC model's outputs are reordered so the blank comes first, as seqwin's decoders expect, and its letters travel
with OUT; preprocessor_config.json's do_normalize becomes OUT's normalize setting (eval and transcribe follow it;
fine-tune such a model with --set data.normalize=true). A bare Wav2Vec2Model has no quantizer: OUT gets fresh
ones, fine for CTC fine-tuning.

Every command that takes a wav2vec2 checkpoint (windowize, eval asr, transcribe, init.ssl_checkpoint of
train asr) also takes DIR itself; importing once skips the conversion each time. Next steps:

    seqwin windowize --window 64,64 base960h.pt base960h_w64.pt
    seqwin eval asr --checkpoint base960h_w64.pt --data LibriSpeech/test-clean eval_w64
    seqwin windowize --window 128,128 xlsr.pt xlsr_w128.pt
    seqwin train asr --config CONFIG --set init.ssl_checkpoint=xlsr_w128.pt --set data.normalize=true OUT

(fine-tuning keeps the init model's windows unless CONFIG sets model.config.attention).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="import a model saved by another toolkit",
                              description="Import a model saved by another toolkit as a seqwin model file.")
    sources = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    hf = sources.add_parser("hf", help="a Hugging Face transformers wav2vec2 folder (config.json + weights)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hf.add_argument("folder", metavar="DIR", help="the model folder (save_pretrained output)")
    hf.add_argument("out", metavar="OUT", help="output seqwin model file (e.g. xlsr.pt)")
    hf.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from seqwin.models.wav2vec2 import checkpoint

    loaded = checkpoint.import_hf(Path(args.folder))
    out = checkpoint.save(Path(args.out), loaded.model, loaded.config, dictionary=loaded.dictionary,
                          normalize=loaded.normalize)
    enc = loaded.config.model.encoder_config
    vocabulary = "" if loaded.family == checkpoint.SSL_FAMILY else (
        f", {len(loaded.dictionary)} CTC symbols" if loaded.dictionary else ", no vocab.json (give --dict later)")
    print(f"{args.folder} -> {out}: {loaded.family}, {enc.num_encoder_layers} layers x {enc.model_dim} dim, "
          f"{enc.norm_order.name.lower()}-norm{vocabulary}, normalize={str(loaded.normalize).lower()}")
    return 0
