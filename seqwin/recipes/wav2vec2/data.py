"""Batches of a wav2vec2 manifest: cut to a padded-samples budget, sharded over ranks, decoded in a background
fairseq2 pipeline (training and evaluation alike)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fairseq2.data.data_pipeline import read_sequence

from seqwin.data.pipeline import AudioBatch, AudioManifestDataset


def split_batches(batches: list[list[int]], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Cut each batch (indices in ascending length) so that ``size x longest <= budget``; an utterance longer
    than ``budget`` stays, alone, in a batch of its own."""
    out: list[list[int]] = []
    for batch in batches:
        current: list[int] = []
        for i in batch:
            if current and (len(current) + 1) * int(lengths[i]) > budget:
                out.append(current)
                current = []
            current.append(i)
        out.append(current)
    return out


def epoch_batches(dataset: AudioManifestDataset, epoch: int, budget: int | None = None) -> list[list[int]]:
    batches = dataset.batches(epoch)
    return batches if budget is None else split_batches(batches, dataset.lengths, budget)


def batch_stream(dataset: AudioManifestDataset, epoch: int, skip: int, rank: int = 0, world_size: int = 1,
                 budget: int | None = None) -> Iterator[AudioBatch]:
    """This rank's batches of ``epoch`` after the first ``skip`` (the trainer's resume position), decoded in a
    background fairseq2 pipeline. Skipped batches are never decoded."""
    batches = epoch_batches(dataset, epoch, budget)
    batches = batches[: len(batches) - len(batches) % world_size][rank::world_size][skip:]
    if not batches:
        return iter(())
    builder = read_sequence(batches).map(dataset.load_batch, num_parallel_calls=dataset.config.num_parallel_calls)
    return iter(builder.prefetch(2).and_return())
