"""Inputs that are awkward to make: damaged gzip, FIFOs fed by a thread."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path


def corrupt_gzip() -> bytes:
    """gzip whose deflate data is damaged: zlib itself fails ("invalid code lengths set")."""
    data = bytearray(gzip.compress(b"".join(b">r%d\n%s\n" % (i, b"ACGT" * 75) for i in range(200))))
    for i in range(12, 16):
        data[i] ^= 0x55
    return bytes(data)


def write_fifo(path: Path, content: bytes, pieces: int = 1) -> threading.Thread:
    """A FIFO at `path` fed `content` (in `pieces` writes) by a thread once a reader opens it."""
    os.mkfifo(path)

    def feed():
        with open(path, "wb", buffering=0) as fifo:
            step = -(-len(content) // pieces)
            for i in range(0, len(content), step):
                fifo.write(content[i : i + step])

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return writer
