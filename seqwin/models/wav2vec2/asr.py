"""fairseq2's wav2vec 2.0 CTC model with intermediate CTC (Lee & Watanabe, "Intermediate Loss Regularization for
CTC-based Speech Recognition", ICASSP 2021).

During training the loss is ``(1 - w) * CTC(final layer) + w * CTC(layer k)``: layer ``k``'s output goes through
the encoder's final layer norm and the *same* CTC head, so the lower half of the encoder is asked to predict the
letters too. That regularizes a small model trained on little data without a single new parameter: checkpoints,
decoding and evaluation are exactly fairseq2's model, and with ``w = 0`` so is training.
"""

from __future__ import annotations

import torch
from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrModel
from fairseq2.nn import BatchLayout
from torch import Tensor
from torch.nn.functional import ctc_loss


class InterCtcAsrModel(Wav2Vec2AsrModel):
    """``Wav2Vec2AsrModel`` whose training loss adds intermediate CTC after encoder layer ``inter_ctc_layer``
    (1-based) with weight ``inter_ctc_weight``. Inference and validation losses are the plain model's."""

    def __init__(self, *args, inter_ctc_weight: float, inter_ctc_layer: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.inter_ctc_weight = inter_ctc_weight
        self.inter_ctc_layer = inter_ctc_layer

    def forward(self, seqs: Tensor, seqs_layout: BatchLayout, targets: Tensor | None = None,
                targets_layout: BatchLayout | None = None, *, return_logits: bool = False):
        if targets is None or not self.training or self.inter_ctc_weight == 0.0:
            return super().forward(seqs, seqs_layout, targets, targets_layout, return_logits=return_logits)
        kept: list[Tensor] = []

        def keep_layer_output(index: int, out: Tensor, layout: BatchLayout, num_layers: int) -> bool:
            if index + 1 == self.inter_ctc_layer:
                kept.append(out)
            return True

        # fairseq2's forward and loss for the last layer; the hook keeps layer k's output on the way
        handle = self.encoder.register_layer_hook(keep_layer_output)
        try:
            loss, logits, layout = super().forward(seqs, seqs_layout, targets, targets_layout, return_logits=True)
        finally:
            handle.remove()
        inter = kept[0] if self.encoder.layer_norm is None else self.encoder.layer_norm(kept[0])
        # (b, s, v) -> (s, b, v); float32 for the same stability reason as fairseq2's loss
        log_probs = torch.log_softmax(self._head(inter), dim=-1, dtype=torch.float32).transpose(0, 1)
        inter_loss = ctc_loss(log_probs, targets, layout.seq_lens_pt, targets_layout.seq_lens_pt,
                              reduction="sum", zero_infinity=True)
        w = self.inter_ctc_weight
        loss = (1.0 - w) * loss + w * inter_loss
        return (loss, logits, layout) if return_logits else loss

    def _head(self, seqs: Tensor) -> Tensor:
        if self.final_dropout is not None:
            seqs = self.final_dropout(seqs)
        return self.final_proj(seqs)
