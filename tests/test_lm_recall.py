"""tools/lm_recall.py: the recall sequences say what they claim, and every attention layout trains on them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import lm_recall  # noqa: E402


def test_each_read_repeats_its_write_and_nothing_overlaps():
    task = lm_recall.RecallTask(seq_len=96, pairs=8, keys=10, values=5, filler=7)
    tokens, distance = task.sample(torch.Generator().manual_seed(0), batch=6, max_distance=40)
    assert tokens.shape == (6, 97) and distance.shape == (6, 96)
    is_key = (tokens >= 7) & (tokens < 17)
    assert ((tokens >= 17) == torch.roll(is_key, 1, dims=1)).all()  # a value exactly after each key, only there
    for row in range(6):
        reads = distance[row].nonzero().flatten().tolist()
        assert len(reads) >= 6  # a few pairs may find no room, most do
        assert len(reads) * 4 == int(is_key[row].sum() + (tokens[row] >= 17).sum())
        for read in reads:
            write = read - int(distance[row, read])
            assert 2 <= read - write <= 40
            assert tokens[row, write] == tokens[row, read] and tokens[row, write + 1] == tokens[row, read + 1]
            assert (tokens[row, :read] == tokens[row, read]).sum() == 1  # the key was written once before
        keys = tokens[row][is_key[row]]
        assert len(keys.unique()) == len(reads)  # each key: one write and one read


def test_bad_task_sizes_are_refused():
    with pytest.raises(ValueError, match="keys"):
        lm_recall.RecallTask(seq_len=64, pairs=8, keys=4, values=4, filler=4)
    with pytest.raises(ValueError, match="positions"):
        lm_recall.RecallTask(seq_len=16, pairs=8, keys=8, values=4, filler=4)


def test_distance_bins_cover_every_distance_once():
    bins = lm_recall.distance_bins(window=16, seq_len=100)
    assert bins == [(2, 16), (16, 32), (32, 64), (64, 100)]


@pytest.mark.parametrize("layout", lm_recall.LAYOUTS)
def test_every_layout_trains_and_scores(layout, capsys):
    args = argparse.Namespace(seq_len=48, window=8, pairs=4, keys=8, values=4, filler=4, dim=32, layers=2, heads=2,
                              clusters=2, shared_qk=True, steps=2, batch=2, lr=1e-3, ramp=1.0, eval_batches=1,
                              cost_len=64, log_every=1, seed=0)
    task = lm_recall.RecallTask(args.seq_len, args.pairs, args.keys, args.values, args.filler)
    model, log = lm_recall.train(layout, task, args)
    assert [row["step"] for row in log] == [1, 2] and log[0]["max_distance"] < log[1]["max_distance"] == 46
    rows = lm_recall.evaluate(model, task, args)
    assert sum(r["reads"] for r in rows) > 0 and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert lm_recall.step_seconds(layout, task, args) > 0


def test_fused_writes_name_key_and_value_in_one_token():
    task = lm_recall.RecallTask(seq_len=96, pairs=8, keys=10, values=5, filler=7, fused=True)
    assert task.vocab_size == 7 + 10 + 5 + 10 * 5
    tokens, distance = task.sample(torch.Generator().manual_seed(1), batch=4, max_distance=60)
    for row in range(4):
        reads = distance[row].nonzero().flatten().tolist()
        assert len(reads) >= 6
        for read in reads:
            write = read - int(distance[row, read])
            key, value = int(tokens[row, read]) - 7, int(tokens[row, read + 1]) - 17
            assert 0 <= key < 10 and 0 <= value < 5
            assert tokens[row, write] == 22 + key * 5 + value  # the fused id of exactly this pair
            assert tokens[row, write + 1] < 7  # filler: the value is only in the fused token
            assert (tokens[row, :read] == tokens[row, read]).sum() == 0  # the bare key never appeared before


def test_merge_takes_layouts_of_agreeing_runs_only(tmp_path):
    settings = {"task": {"seq_len": 64}, "model": {"heads": 2}, "training": {"steps": 5}}
    a = {**settings, "layouts": {"full": {"accuracy_by_distance": []}}}
    b = {**settings, "layouts": {"routing": {"accuracy_by_distance": []}}}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    assert list(lm_recall.merge_reports([a, b], paths)["layouts"]) == ["full", "routing"]
    with pytest.raises(SystemExit, match="b.json: layout 'full' is in two"):
        lm_recall.merge_reports([a, a], paths)
    with pytest.raises(SystemExit, match="b.json: its training settings differ"):
        lm_recall.merge_reports([a, {**b, "training": {"steps": 6}}], paths)
    paths[0].write_text("{")
    with pytest.raises(SystemExit, match="a.json: not a readable"):
        lm_recall.load_report(paths[0])
