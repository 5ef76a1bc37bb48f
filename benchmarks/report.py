"""Shared by the benchmark scripts: write a table into its marked block of BENCHMARKS.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vqlib.io import atomic_write  # noqa: E402


def write_block(path: str | Path, name: str, text: str, heading: str | None = None) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``.

    The file is read right before writing (several benchmark jobs may update it
    in turn) and written atomically. Without the markers the block is appended,
    under ``heading`` when one is given.
    """
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old.split(begin, 1)[1]:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(new))


def machine_line(threads: str, versions: str) -> str:
    """``Machine: <cpu>, <threads>; <versions>; <UTC date>`` for the header of a benchmark block."""
    import datetime
    import platform

    now = datetime.datetime.now(datetime.timezone.utc)
    return f"Machine: {platform.processor() or platform.machine()}, {threads}; {versions}; {now:%Y-%m-%d %H:%M} UTC"
