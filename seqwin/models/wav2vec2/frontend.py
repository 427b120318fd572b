"""Log-mel feature extractor: waveforms -> normalized log-mel filterbanks, ``stack`` frames per encoder step.

A drop-in ``SequenceFeatureExtractor`` for fairseq2's ``Wav2Vec2Frontend`` (so masking, quantization and the
losses stay fairseq2's). It takes the same padded waveform batches as the conv frontend; filterbanks are computed
in fp32 without gradients, only from windows that lie inside the utterance, and normalized per utterance over
its own frames, so an utterance's features do not depend on how much its batch is padded.
"""

from __future__ import annotations

import torch
from fairseq2.models.feature_extractor import SequenceFeatureExtractor
from fairseq2.nn import BatchLayout
from torch import Tensor
from torchaudio.transforms import MelSpectrogram

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
WIN = 400  # 25 ms


class LogMelFeatureExtractor(SequenceFeatureExtractor):
    def __init__(self, num_mel_bins: int, stack: int, time_stretch: float = 0.0, freq_warp: float = 0.0,
                 noise_p: float = 0.0, noise_snr_db: float = 10.0) -> None:
        super().__init__()
        self.num_mel_bins, self.stack, self.time_stretch = num_mel_bins, stack, time_stretch
        self.freq_warp, self.noise_p, self.noise_snr_db = freq_warp, noise_p, noise_snr_db
        self.mel = MelSpectrogram(SAMPLE_RATE, n_fft=WIN, win_length=WIN, hop_length=HOP, n_mels=num_mel_bins,
                                  center=False, power=2.0)

    @staticmethod
    def mel_frames(num_samples: int) -> int:
        """10 ms frames whose 25 ms window lies inside the audio: padding never reaches a valid frame."""
        return max(0, (num_samples - WIN) // HOP + 1)

    def frames(self, num_samples: int) -> int:
        """Encoder steps for ``num_samples`` of audio."""
        return self.mel_frames(num_samples) // self.stack

    def forward(self, seqs: Tensor, seqs_layout: BatchLayout) -> tuple[Tensor, BatchLayout]:
        if seqs_layout.packed:
            raise ValueError("`seqs` must not be a packed batch.")
        if seqs.ndim == 3:  # (N, S, 1) -> (N, S)
            seqs = seqs.squeeze(2)
        batch, num_samples = seqs.shape
        lens = list(seqs_layout.seq_lens) if seqs_layout.padded else [num_samples] * batch
        with torch.no_grad():
            waves = seqs.float()
            if self.training and self.noise_p > 0.0:
                waves = self._add_noise(waves, lens)
            # (N, S) -> (N, M, F) -> (N, F, M)
            feats = self.mel(waves).clamp_min(1e-10).log().transpose(1, 2)
            num_frames = feats.shape[1]
            frame_lens = torch.tensor([min(self.mel_frames(n), num_frames) for n in lens], device=feats.device)
            valid = (torch.arange(num_frames, device=feats.device)[None, :] < frame_lens[:, None]).unsqueeze(-1)
            count = frame_lens.clamp_min(1)[:, None, None]
            mean = (feats * valid).sum(1, keepdim=True) / count
            var = (((feats - mean) * valid) ** 2).sum(1, keepdim=True) / count
            feats = ((feats - mean) / (var + 1e-5).sqrt()) * valid
            padded = seqs_layout.padded
            if self.training and self.freq_warp > 0.0:
                feats = self._warp(feats)  # a padding frame is all zeros, and so is its warp
            if self.training and self.time_stretch > 0.0:
                feats, frame_lens = self._stretch(feats, frame_lens)
                padded = True
            steps = feats.shape[1] // self.stack
            # (N, F, M) -> (N, F / stack, stack * M)
            feats = feats[:, : steps * self.stack].reshape(batch, steps, self.stack * self.num_mel_bins)
        out_lens = [max(1, min(int(n) // self.stack, steps)) for n in frame_lens.tolist()]
        return feats.to(seqs.dtype), BatchLayout.of(feats, out_lens if padded else None)

    def _stretch(self, feats: Tensor, frame_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Training augmentation: each utterance's frames resampled by a random factor in
        ``[1 - time_stretch, 1 + time_stretch]`` (tempo change, like speed perturbation without the pitch)."""
        factors = 1.0 + self.time_stretch * (2 * torch.rand(len(frame_lens)) - 1)
        new_lens = [max(1, round(int(n) * float(f))) for n, f in zip(frame_lens, factors, strict=True)]
        out = feats.new_zeros(len(new_lens), max(new_lens), feats.shape[2])
        for i, (n, m) in enumerate(zip(frame_lens.tolist(), new_lens, strict=True)):
            if n > 0:
                # (F, M) -> (1, M, F) -> (1, M, F') -> (F', M)
                row = feats[i, :n].T.unsqueeze(0)
                out[i, :m] = torch.nn.functional.interpolate(row, size=m, mode="linear", align_corners=True)[0].T
        return out, torch.tensor(new_lens, device=feats.device)

    def _warp(self, feats: Tensor) -> Tensor:
        """Training augmentation: each utterance's mel axis stretched by a random factor ``a`` in
        ``[1 - freq_warp, 1 + freq_warp]``: bin ``j`` takes the (interpolated) value of bin ``j / a``, so ``a > 1``
        moves pitch and formants up. Bins read from beyond the top repeat the top bin."""
        batch, _, bins = feats.shape
        factors = 1.0 + self.freq_warp * (2 * torch.rand(batch, 1, device=feats.device) - 1)
        # (N, M) source position of every output bin
        pos = (torch.arange(bins, device=feats.device)[None, :] / factors).clamp(max=bins - 1)
        lo = pos.floor().long()
        frac = (pos - lo)[:, None, :]
        # (N, M) -> (N, F, M) indices of the bins on either side of each source position
        lo3 = lo[:, None, :].expand_as(feats)
        hi3 = (lo + 1).clamp(max=bins - 1)[:, None, :].expand_as(feats)
        return feats.gather(2, lo3) * (1 - frac) + feats.gather(2, hi3) * frac

    def _add_noise(self, waves: Tensor, lens: list[int]) -> Tensor:
        """Training augmentation: white noise, with probability ``noise_p`` per utterance, at a signal-to-noise
        ratio drawn from ``[noise_snr_db, noise_snr_db + 20]`` dB of that utterance's own power. Padding stays 0."""
        out = waves.clone()
        for i, n in enumerate(lens):
            if n == 0 or float(torch.rand(())) >= self.noise_p:
                continue
            snr_db = self.noise_snr_db + 20.0 * float(torch.rand(()))
            power = waves[i, :n].pow(2).mean()
            out[i, :n] += torch.randn(n, device=waves.device) * (power / 10 ** (snr_db / 10)).sqrt()
        return out

    def extra_repr(self) -> str:
        return (f"num_mel_bins={self.num_mel_bins}, stack={self.stack}, hop_ms=10, time_stretch={self.time_stretch}, "
                f"freq_warp={self.freq_warp}, noise_p={self.noise_p}, noise_snr_db={self.noise_snr_db}")
