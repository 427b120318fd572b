"""User mistakes and OS conditions end a command with one line on stderr and exit code 2, not a traceback:
unusable paths, truncated or foreign checkpoints, a full disk while checkpointing, misleading messages."""

from __future__ import annotations

import argparse
import errno
import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from lm_helpers import TINY_RECIPE
from test_codec_util import speechlike, tiny_codec_config
from test_training import full_disk_for
from test_wav2vec2_models import small

from seqwin.cli.main import main, os_error_message
from seqwin.io import checkpoint_files
from seqwin.models.codec import checkpoint as codec_checkpoint
from seqwin.models.codec import create_codec
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.config import asr_presets
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model
from seqwin.recipes.wav2vec2.config import AsrRecipeConfig
from seqwin.training import to_yaml
from seqwin.training.checkpoint import safe_load

pytestmark = pytest.mark.usefixtures("one_thread")

NOT_THERE = Path("/proc/seqwin-no-such-dir")  # nobody, root included, can create anything in /proc


def _error(capsys, argv: list) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr, which is returned."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A codec, a wav2vec2 CTC model, a text corpus with an LM recipe, audio, a manifest and a plain file."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    codec_checkpoint.save(root / "codec.pt", create_codec(tiny_codec_config()).eval())
    cfg = small(asr_presets()["tiny"])
    wav2vec2_checkpoint.save(root / "asr.pt", create_seqwin_wav2vec2_asr_model(cfg), cfg,
                             dictionary=["<s>", "<pad>", "</s>", "<unk>", "|", *"ABCDEFG"])
    sf.write(root / "speech.flac", speechlike(0.5), 16000)
    sf.write(root / "narrow.wav", speechlike(0.5, sample_rate=8000), 8000, subtype="PCM_16")
    (root / "test.tsv").write_text(f"{root}\nspeech.flac\t8000\n")
    (root / "test.wrd").write_text("HELLO\n")
    text = root / "text"
    text.mkdir()
    for split in ("train", "valid", "test"):
        (text / f"{split}.txt").write_text("".join(f"Line {i}: to be, or not to be.\n\n" for i in range(150)))
    (root / "lm.yaml").write_text(TINY_RECIPE % ("byte", text, "text"))
    (root / "file").write_text("not a directory\n")
    return {"root": root, "codec": root / "codec.pt", "asr": root / "asr.pt", "flac": root / "speech.flac",
            "narrow": root / "narrow.wav", "tsv": root / "test.tsv", "text": text, "lm_config": root / "lm.yaml",
            "file": root / "file"}


@pytest.fixture(scope="module")
def lm_run(files, tmp_path_factory) -> Path:
    """A finished `seqwin train lm` run: checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("lm") / "run"
    assert main(["train", "lm", "--config", str(files["lm_config"]), str(out)]) == 0
    return out


def _out_command(kind: str, files: dict[str, Path], out: Path) -> list:
    t = files["text"]
    return {
        "prepare": ["prepare", "text", "files", t / "train.txt", t / "valid.txt", t / "test.txt", out],
        "tokenize": ["tokenize", files["flac"], "-o", out, "--checkpoint", files["codec"]],
        "train lm": ["train", "lm", "--config", files["lm_config"], out],
        "eval asr": ["eval", "asr", "--checkpoint", files["asr"], "--data", files["tsv"], out],
    }[kind]


@pytest.mark.parametrize("kind", ["prepare", "tokenize", "train lm", "eval asr"])
@pytest.mark.parametrize("where,reason", [("under a file", "Not a directory"),
                                          ("under /proc", "No such file or directory")])
def test_output_directory_that_cannot_be_made(files, capsys, kind, where, reason):
    parent = files["file"] if where == "under a file" else NOT_THERE
    line = _error(capsys, _out_command(kind, files, parent / "out"))
    command = kind.split()[0]
    assert re.fullmatch(rf"seqwin {command}: error: {re.escape(str(parent))}\S*: {reason}", line), line


def test_config_that_is_a_directory(files, tmp_path, capsys):
    line = _error(capsys, ["train", "lm", "--config", files["text"], tmp_path / "out"])
    assert line == f"seqwin train: error: {files['text']}: Is a directory"


def test_train_output_that_is_a_file(files, capsys):
    line = _error(capsys, ["train", "lm", "--config", files["lm_config"], files["file"]])
    assert line == f"seqwin train: error: {files['file']}: exists and is not a directory"


@pytest.mark.parametrize("keep", [0.02, 0.5])  # the zip directory gone: different errors inside torch
def test_eval_lm_truncated_checkpoint(lm_run, tmp_path, capsys, keep):
    data = (lm_run / "checkpoints" / "step_4.pt").read_bytes()
    truncated = tmp_path / "step_4.pt"
    truncated.write_bytes(data[: int(len(data) * keep)])
    line = _error(capsys, ["eval", "lm", lm_run, "--checkpoint", truncated])
    assert line.startswith(f"seqwin eval: error: {truncated}: not a readable checkpoint (")


def test_detokenize_given_audio(files, tmp_path, capsys):
    line = _error(capsys, ["detokenize", files["flac"], "-o", tmp_path / "wavs", "--checkpoint", files["codec"]])
    assert line.startswith(f"seqwin detokenize: error: {files['flac']}: not a codes index (")


def _asr_run(root: Path) -> Path:
    run = root / "asr_run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text(to_yaml(AsrRecipeConfig()))  # what `seqwin train asr` writes there
    return run


@pytest.mark.parametrize("command,run,needle", [
    ("eval lm", "asr", "is a wav2vec2 ASR run (seqwin train asr), not an LM run"),
    ("eval codec", "lm", "is an LM run (seqwin train lm), not a codec run"),
    ("tokenize", "lm step", "is an LM run (seqwin train lm), not a codec run"),
])
def test_a_run_of_another_kind_is_named(files, lm_run, tmp_path, capsys, command, run, needle):
    path = {"asr": _asr_run(tmp_path), "lm": lm_run, "lm step": lm_run / "checkpoints" / "step_4.pt"}[run]
    argv = {"eval lm": ["eval", "lm", path],
            "eval codec": ["eval", "codec", "--checkpoint", path, "--data", files["flac"], "-o", tmp_path / "r"],
            "tokenize": ["tokenize", files["flac"], "-o", tmp_path / "codes", "--checkpoint", path]}[command]
    line = _error(capsys, argv)
    run_dir = path if run != "lm step" else lm_run
    assert line == f"seqwin {command.split()[0]}: error: {run_dir} {needle}"


def test_eval_asr_missing_manifest(files, tmp_path, capsys):
    missing = tmp_path / "missing.tsv"
    line = _error(capsys, ["eval", "asr", "--checkpoint", files["asr"], "--data", missing, tmp_path / "out"])
    assert line == f"seqwin eval: error: --data {missing}: no such file or directory"


def test_tokenize_sample_rate_hint(files, tmp_path, capsys):
    assert main(["tokenize", str(files["narrow"]), "-o", str(tmp_path / "codes"), "--checkpoint",
                 str(files["codec"])]) == 2
    printed = capsys.readouterr().out
    assert "(resample it first, e.g. sox IN -r 16000 OUT)" in printed and "{" not in printed


def test_disk_full_while_checkpointing(files, lm_run, tmp_path, capsys, monkeypatch):
    """Continuing a finished run to step 6 on a disk that fills up while step_6.pt is written: one line, the
    partial file removed, the older checkpoints intact."""
    run = tmp_path / "run"
    shutil.copytree(lm_run, run)
    monkeypatch.setattr(checkpoint_files, "open", full_disk_for(6), raising=False)
    line = _error(capsys, ["train", "lm", "--config", files["lm_config"], run, "--set", "trainer.max_steps=6"])
    assert line == f"seqwin train: error: {run / 'checkpoints' / 'step_6.pt'}: No space left on device"
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2.pt", "step_4.pt"]
    assert safe_load(checkpoints / "step_4.pt")["step"] == 4


@pytest.mark.parametrize("error,expected", [
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/x/out/codes"), "/data/x/out/codes: Not a directory"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data"), "/data: No such file or directory"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/in.txt"), "/data/in.txt: Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device", "/scratch/tmp"), "/scratch/tmp: No space left on device"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    # not about the user's paths, or not a path error: a bug, shown with its traceback
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/usr/share/seqwin/x"), None),
    (OSError(errno.EINVAL, "Invalid argument", "/data/x/out"), None),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), None),
])
def test_which_os_errors_are_the_users(error, expected):
    args = argparse.Namespace(command="tokenize", inputs=[Path("/data/in.txt")], out=Path("/data/x/out"))
    assert os_error_message(error, args) == expected


def test_os_error_of_a_bug_keeps_its_traceback(files, monkeypatch):
    def broken(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/usr/share/seqwin/missing.bin")

    monkeypatch.setattr("seqwin.models.codec.checkpoint.load", broken)
    with pytest.raises(FileNotFoundError):
        main(["tokenize", str(files["flac"]), "-o", str(files["root"] / "codes"), "--checkpoint",
              str(files["codec"])])
