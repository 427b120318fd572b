"""Errors raised by the data tools, and the log of inputs they skipped.

Every input that a data tool does not use ends up either in a :class:`DataError` (which names the file and,
where there is one, the line) or in an :class:`IssueLog` entry that is counted, summarized at the end of the
run and written to an ``issues.tsv`` file. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from seqwin.errors import UserError

log = logging.getLogger(__name__)


class DataError(UserError):
    """A bad input file or option; the CLI prints the message as one line and exits with code 2."""


def where(path: Path | str, line: int | None = None) -> str:
    """``path`` or ``path:line``, the prefix every data message starts with."""
    return f"{path}:{line}" if line is not None else str(path)


@dataclass(frozen=True)
class Issue:
    """One problem found in the input. ``action`` is ``"skipped"`` or what was done instead (``"kept"``)."""

    category: str
    path: str
    line: int | None
    detail: str
    action: str = "skipped"


@dataclass
class IssueLog:
    """Collects skipped or repaired inputs; ``strict=True`` turns the first skip into a :class:`DataError`."""

    strict: bool = False
    issues: list[Issue] = field(default_factory=list)

    def skip(self, category: str, path: Path | str, detail: str, line: int | None = None) -> None:
        if self.strict:
            raise DataError(f"{where(path, line)}: {category}: {detail}")
        self._add(Issue(category, str(path), line, detail, "skipped"))

    def note(
        self, category: str, path: Path | str, detail: str, action: str, line: int | None = None
    ) -> None:
        """Record a problem handled without skipping the input (e.g. stereo kept, to be downmixed)."""
        self._add(Issue(category, str(path), line, detail, action))

    def _add(self, issue: Issue) -> None:
        self.issues.append(issue)
        # Details go to debug; the summary at the end reports every category with examples.
        log.debug(
            "%s: %s: %s (%s)", where(issue.path, issue.line), issue.category, issue.detail, issue.action
        )

    @property
    def num_skipped(self) -> int:
        return sum(1 for i in self.issues if i.action == "skipped")

    def counts(self) -> Counter[tuple[str, str]]:
        return Counter((i.category, i.action) for i in self.issues)

    def summary_lines(self, max_examples: int = 3) -> list[str]:
        """One line per (category, action) with a count and the first few offending files."""
        lines = []
        for (category, action), n in sorted(self.counts().items()):
            examples = [i for i in self.issues if i.category == category and i.action == action][
                :max_examples
            ]
            shown = "; ".join(f"{where(i.path, i.line)} ({i.detail})" for i in examples)
            more = f" and {n - len(examples)} more" if n > len(examples) else ""
            lines.append(f"{action} {n} x {category}: {shown}{more}")
        return lines

    def write_tsv(self, path: Path) -> None:
        """Write every issue (``action category path line detail``) so the full list survives the run."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["action", "category", "path", "line", "detail"])
            for i in self.issues:
                w.writerow([i.action, i.category, i.path, "" if i.line is None else i.line, i.detail])
