"""A run's answers so far, on disk, so that `predict --resume` goes on where a run stopped.

The journal holds the pipeline's answers for the first N chunks of the input, in input order,
appended one batch at a time: a header line (what run it belongs to), then blocks of
(chunk count, CRC-32, PROBABILITIES rows, FRAME_KEPT rows). A run killed mid-write leaves a
torn last block, which is dropped on resume. The result files are always written whole from
the journal plus the new answers, so no chunk is lost or written twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from virnucpro_triton.errors import ClientError
from virnucpro_triton.results.outputs import create_exclusive

NAME = ".predict-journal"
_MAGIC = b"virnucpro-triton journal 1\n"
_BLOCK = struct.Struct("<II")  # chunks in the block, CRC-32 of its payload
_ROW_BYTES = 6 * 2 * 4 + 6  # float32 probabilities [6, 2] + bool kept [6]
_SAMPLE = 1 << 20
_log = logging.getLogger(__name__)


class ResumeRefused(ClientError):
    """`--resume` cannot go on from this directory; the message says what to do instead."""

    resumable = False


def fingerprint(fasta: Path, chunk_size: int, min_length: int = 0) -> dict:
    """What must not change between a run and its resumption: the input, the chunk size and
    the minimum length (which records send chunks: the journal counts chunks in input order)."""
    stat = fasta.stat()
    digest = hashlib.sha256()
    with open(fasta, "rb") as handle:  # head and tail: cheap on any size, catches edits
        digest.update(handle.read(_SAMPLE))
        handle.seek(max(stat.st_size - _SAMPLE, 0))
        digest.update(handle.read(_SAMPLE))
    return {
        "input": str(fasta.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256_head_tail": digest.hexdigest(),
        "chunk_size": chunk_size,
        "min_length": min_length,
    }


def _header(handle: BinaryIO) -> dict | None:
    """The run a journal belongs to (its fingerprint), read from its start; None if it is no
    journal of this program."""
    magic, header = handle.readline(), handle.readline()
    try:
        return json.loads(header) if magic == _MAGIC else None
    except ValueError:
        return None


def resumable(path: Path, fasta: Path, chunk_size: int, min_length: int) -> bool:
    """Whether `--resume` would go on from the journal at `path`: one of this input and these
    settings that holds answers (with none, or another run's, it would start again or refuse)."""
    try:
        if path.is_symlink():
            return False
        with open(path, "rb") as handle:
            belongs = _header(handle) == fingerprint(fasta, chunk_size, min_length)
            return belongs and len(handle.read(_BLOCK.size)) == _BLOCK.size
    except OSError:
        return False


class Journal:
    def __init__(self, path: Path, run: dict, *, resume: bool):
        """Open the journal at `path` for the run `run` (a fingerprint); with `resume`, keep the
        answers of an earlier run of the same input, else start empty."""
        self.path = path
        self.recorded = 0  # chunks whose answers the journal holds
        if resume and path.is_symlink():
            raise ResumeRefused(
                f"--resume: {path} is a symbolic link, not a journal this program wrote; "
                "remove it and run without --resume"
            )
        if resume and path.exists():
            self._reopen(run)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = create_exclusive(path, binary=True)
            self._handle.write(_MAGIC + json.dumps(run, sort_keys=True).encode() + b"\n")
            self._handle.flush()
            self._data_start = self._handle.tell()
        self._reader = open(path, "rb")
        self._reader.seek(self._data_start)
        self._buffer = (np.empty((0, 6, 2), np.float32), np.empty((0, 6), bool))

    def _reopen(self, run: dict) -> None:
        with open(self.path, "rb") as handle:
            earlier = _header(handle)
            if earlier is None:
                raise ResumeRefused(
                    f"--resume: {self.path} is not a journal of this program; run without "
                    "--resume to start again"
                )
            if earlier != run:
                changed = sorted(k for k in run if earlier.get(k) != run[k])
                raise ResumeRefused(
                    f"--resume: the unfinished run in {self.path.parent} was made with another "
                    f"input or settings (changed: {', '.join(changed)}); run without --resume "
                    "to start again"
                )
            self._data_start = end = handle.tell()
            size = os.fstat(handle.fileno()).st_size
            while end < size:  # keep whole, intact blocks; a torn tail is where the run was killed
                head = handle.read(_BLOCK.size)
                count, crc = _BLOCK.unpack(head) if len(head) == _BLOCK.size else (0, None)
                # A count beyond what the file holds is torn too, and is never read into memory.
                whole = crc is not None and count * _ROW_BYTES <= size - handle.tell()
                if not whole or zlib.crc32(handle.read(count * _ROW_BYTES)) != crc:
                    _log.warning(
                        "%s: the block at byte %d is torn or damaged (a run stopped while "
                        "writing it): it and what follows are dropped, their chunks asked again",
                        self.path,
                        end,
                    )
                    break
                self.recorded += count
                end = handle.tell()
        self._handle = open(self.path, "r+b")
        self._handle.truncate(end)
        self._handle.seek(end)

    def append(self, probabilities: np.ndarray, kept: np.ndarray) -> None:
        """Add the answers of the next chunks; on disk (the OS's cache) when this returns."""
        payload = (
            np.ascontiguousarray(probabilities, np.float32).tobytes()
            + np.ascontiguousarray(kept, bool).tobytes()
        )
        self._handle.write(_BLOCK.pack(len(kept), zlib.crc32(payload)) + payload)
        self._handle.flush()

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` recorded answers, in order (the journal is read once, front to back)."""
        probabilities, kept = self._buffer
        while len(kept) < n:
            count, _ = _BLOCK.unpack(self._reader.read(_BLOCK.size))
            raw = self._reader.read(count * _ROW_BYTES)
            split = count * 6 * 2 * 4
            probabilities = np.concatenate(
                [probabilities, np.frombuffer(raw[:split], np.float32).reshape(count, 6, 2)]
            )
            kept = np.concatenate([kept, np.frombuffer(raw[split:], bool).reshape(count, 6)])
        self._buffer = probabilities[n:], kept[n:]
        return probabilities[:n], kept[:n]

    def close(self) -> None:
        self._handle.close()
        self._reader.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
