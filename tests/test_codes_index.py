"""The codes index (``seqwin-codes/1``): written by ``seqwin tokenize``, read by ``seqwin detokenize`` and the
speech LM's data; its readers name the file for anything that is not an index."""

from __future__ import annotations

import json

import pytest

from seqwin.data.codes_index import FORMAT, read_codes_index, write_codes_index
from seqwin.data.errors import DataError

HEADER = {"sample_rate": 16000, "hop_length": 320, "frame_rate": 50.0, "num_quantizers": 2, "codebook_size": 16,
          "checkpoint": "codec.pt", "causal": True, "precision": "fp32"}


def _record(uid: str) -> dict:
    return {"id": uid, "codes": f"codes/{uid}.npy", "source": f"/audio/{uid}.flac", "num_samples": 960,
            "num_frames": 3}


def test_write_then_read(tmp_path):
    skipped = [{"source": "/audio/bad.flac", "reason": "empty"}]
    write_codes_index(tmp_path, HEADER, [_record("a"), _record("sub/b")], skipped)
    index, items = read_codes_index(tmp_path)  # the folder, or its index.json
    assert index == {"format": FORMAT, **HEADER, "utterances": [_record("a"), _record("sub/b")], "skipped": skipped}
    assert items == [{"id": "a", "path": tmp_path / "codes/a.npy", "num_samples": 960},
                     {"id": "sub/b", "path": tmp_path / "codes/sub/b.npy", "num_samples": 960}]
    assert read_codes_index(tmp_path / "index.json") == (index, items)
    tsv = (tmp_path / "index.tsv").read_text().splitlines()
    assert tsv == ["id\tcodes\tnum_frames\tnum_samples\tsource", "a\tcodes/a.npy\t3\t960\t/audio/a.flac",
                   "sub/b\tcodes/sub/b.npy\t3\t960\t/audio/sub/b.flac"]


def test_a_single_code_file_has_no_index(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"")
    assert read_codes_index(tmp_path / "x.npy") == (None, [{"id": "x", "path": tmp_path / "x.npy",
                                                            "num_samples": None}])


def test_incomplete_records_are_not_written(tmp_path):
    with pytest.raises(ValueError, match=r"'a' lacks \['num_frames'\]"):
        write_codes_index(tmp_path, HEADER, [{k: v for k, v in _record("a").items() if k != "num_frames"}], [])


@pytest.mark.parametrize("content,message", [
    (b"\xff\xfeRIFF", "not a codes index"),
    (b"{", "not valid JSON"),
    (json.dumps({"format": "seqwin-codes/0", "utterances": []}).encode(), f"not a {FORMAT} index"),
    (json.dumps({"format": FORMAT}).encode(), "no utterances list"),
    (json.dumps({"format": FORMAT, "utterances": [{"id": "a"}]}).encode(), "utterance 0 has no id and codes path"),
])
def test_what_is_not_an_index(tmp_path, content, message):
    path = tmp_path / "index.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        read_codes_index(path)


def test_missing(tmp_path):
    with pytest.raises(DataError, match="no such codes index"):
        read_codes_index(tmp_path / "nothing")
    with pytest.raises(DataError, match="no such file"):
        read_codes_index(tmp_path / "nothing.npy")
