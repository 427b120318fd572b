"""seqwin: fast sliding-window and routing attention for speech and long-sequence models.

Run `seqwin COMMAND --help` for each command's options.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

from seqwin import __version__
from seqwin.cli import codec, generate, import_hf, prepare, tasks, transcribe, windowize
from seqwin.errors import UserError

# Each entry adds its subcommand(s) to the top-level parser.
_COMMANDS = [prepare, tasks, codec, generate, windowize, transcribe, import_hf]

log = logging.getLogger("seqwin")

# OS errors that are the user's to fix when they concern a path the user gave: its own, one under it (a file in
# OUT), or one above it (OUT's missing or unwritable parent).
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.EEXIST, errno.ENOTDIR}
# The machine's state, whatever the path: a full disk or quota, a read-only file system.
_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse already exits 2; keep it to one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqwin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"seqwin {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"seqwin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        message = os_error_message(exc, args)
        if message is None:
            raise
        log.debug("the OS error in full:", exc_info=True)  # -v: the traceback too
        print(f"seqwin {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def os_error_message(exc: OSError, args: argparse.Namespace) -> str | None:
    """``"<path>: <reason>"`` for an OS error that is the user's or the machine's doing (see ``_PATH_ERRNOS`` and
    ``_SYSTEM_ERRNOS``); ``None`` for any other, which is a bug and keeps its traceback."""
    reason = exc.strerror or str(exc)
    name = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    if exc.errno in _SYSTEM_ERRNOS:
        return f"{name}: {reason}" if name else reason
    if exc.errno in _PATH_ERRNOS and name and _near_user_path(Path(os.path.abspath(name)), args):
        return f"{name}: {reason}"
    return None


def _near_user_path(path: Path, args: argparse.Namespace) -> bool:
    """Whether ``path`` is, is under, or is above a path among the command's arguments."""
    for value in vars(args).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (str, Path)):
                given = Path(os.path.abspath(item))
                if path == given or given in path.parents or path in given.parents:
                    return True
    return False


if __name__ == "__main__":
    sys.exit(main())
