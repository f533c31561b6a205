"""The progress bar of a command that streams its input through the servers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tqdm import tqdm

from virnucpro_triton.fasta import is_stream


class InputProgress:
    """The share of the input read, in bytes, moved on as answers come in: the input is read
    once, so its size is all that is known of it up front (a stream's not even that). The
    clients read only a few requests ahead of the answers."""

    def __init__(self, path: Path, description: str, shown: bool | None) -> None:
        """`shown`: None shows the bar on a terminal only."""
        if shown is None:
            shown = sys.stderr.isatty()
        try:
            total = None if is_stream(path) else os.stat(path).st_size
        except OSError:
            total = None  # reading says what is wrong with the path
        self._bar = tqdm(
            total=total, unit="B", unit_scale=True, disable=not shown, desc=description
        )
        self._read = 0

    def read(self, n: int) -> None:
        """`read_fasta`'s on_read: n more bytes taken from the input."""
        self._read += n

    def answered(self, *_) -> None:
        """An answer came: the bar shows what was read by then."""
        self._bar.update(self._read - self._bar.n)

    def __enter__(self) -> InputProgress:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
