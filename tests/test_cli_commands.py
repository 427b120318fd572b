"""The command table (seqwin/cli/commands.py): what ``seqwin`` registers is exactly what the table lists, every
command's and task's ``--help`` works, and every training task holds its output directory's lock."""

from __future__ import annotations

import pytest
from test_training import _held_elsewhere

from seqwin.cli.commands import COMMANDS, Family
from seqwin.cli.main import build_parser, main


def _choices(parser) -> dict:
    """``name -> subparser`` of the parser's subcommands, in registration order."""
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return action.choices


def _every_command() -> list[list[str]]:
    argvs = []
    for name, command in COMMANDS.items():
        argvs.append([name])
        if isinstance(command, Family):
            argvs += [[name, task] for task in command.tasks]
    return argvs


def test_registered_commands_are_the_table():
    registered = _choices(build_parser())
    assert list(registered) == list(COMMANDS)
    for name, command in COMMANDS.items():
        if isinstance(command, Family):
            assert list(_choices(registered[name])) == list(command.tasks)


@pytest.mark.parametrize("argv", _every_command(), ids=" ".join)
def test_help_works(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: seqwin {' '.join(argv)} ")


def test_training_tasks_hold_the_output_directory(tmp_path, capsys):
    out = tmp_path / "out"
    config = tmp_path / "missing.yaml"  # never read: the lock comes first
    with _held_elsewhere(out) as pid:
        for task in COMMANDS["train"].tasks:
            argv = ["train", task, str(out)] + ([] if task == "tokenizer" else ["--config", str(config)])
            assert main(argv) == 2, task
            assert f"{out} is in use by pid {pid}" in capsys.readouterr().err, task
