"""Streaming FASTA and FASTQ input with errors that name the input, the line and the record.

Biopython's parsers do the reading; this module adds what a service needs around them: the
format (FASTA or FASTQ) and gzip detected by content, not by suffix; `-` for standard input; any
readable stream (a FIFO, `<(zcat ...)`) read once, front to back, never opened twice or sought;
the alphabet check (`alphabet.py`) and a header check; and line numbers in every error.
FASTQ qualities are read past and ignored: a record is its id and its sequence, as in FASTA.
"""

from __future__ import annotations

import errno
import functools
import gzip
import io
import os
import re
import stat
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO

from Bio.SeqIO.FastaIO import SimpleFastaParser
from Bio.SeqIO.QualityIO import FastqGeneralIterator

from virnucpro_triton.alphabet import DNA, EXPECTED, first_invalid, line_check
from virnucpro_triton.errors import VirnucproError

STDIN = "-"  # the input argument that reads standard input
_GZIP_MAGIC = b"\x1f\x8b"
# The longest line read (a header or a sequence line): one with no line break in sight is not
# FASTA, and a whole genome unwrapped on one line still fits. Lines are read in pieces.
MAX_LINE_BYTES = 64 << 20
_PIECE = 1 << 20
# Control characters (tab, the id/description separator, aside): an id holding one would
# reach the TSVs raw and break or spoof their rows and a terminal showing them.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_IN_LINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # ends in \r\n


class FastaError(VirnucproError, ValueError):
    """Input that cannot be read as nucleotide FASTA; the message is for the user as it is."""

    resumable = False


@dataclass(frozen=True)
class Record:
    id: str  # the header up to the first whitespace (Biopython's record.id)
    sequence: str  # as written in the file (case kept), whitespace removed
    line: int  # line number of the header


def is_stream(path: Path | str) -> bool:
    """Whether the input can be read only once (stdin, a FIFO, a pipe): no size to measure
    progress against, no resumption, no look before the run (check_input)."""
    if str(path) == STDIN:
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False  # reading reports it


def check_input(path: Path | str, alphabet: str = DNA) -> None:
    """Refuse an unusable input before any server work: a regular file's first record is read;
    a stream is only looked at (opening a FIFO would take a writer's data away)."""
    if is_stream(path):
        _check_path(path)
    else:
        next(iter(read_fasta(path, alphabet)))


def read_fasta(
    path: Path | str, alphabet: str = DNA, on_read: Callable[[int], None] | None = None
) -> Iterator[Record]:
    """Yield the records of a FASTA or FASTQ input one at a time (memory stays flat).

    `alphabet` is alphabet.DNA (nucleotide sequences, the default) or alphabet.PROTEIN.
    `on_read(n)` is told of every n bytes taken from the input (gzip's before inflating), for
    progress shown as the share of the input read.
    """
    name = "<stdin>" if str(path) == STDIN else str(path)
    with _open_binary(path, on_read) as binary:
        lines = _Lines(name, binary)
        first = next(iter(lines), None)
        if first is None:
            raise FastaError(f"{name}: no FASTA or FASTQ records (the input is empty)")
        if first.startswith(">"):
            yield from _fasta(lines, first, alphabet)
        elif first.startswith("@"):
            yield from _fastq(lines, first, alphabet)
        else:
            raise lines.not_fasta(first.strip()[:40])


def _check_path(path: Path | str) -> None:
    """Say what the input is when it cannot be opened for reading, not just "no such file"."""
    if str(path) == STDIN:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise FastaError(f"{path}: broken symbolic link to {os.readlink(path)}") from None
        raise FastaError(f"{path}: no such file") from None
    except OSError as error:
        reason = "symbolic link loop" if error.errno == errno.ELOOP else error.strerror
        raise FastaError(f"{path}: cannot be opened: {reason}") from None
    if stat.S_ISDIR(mode):
        raise FastaError(f"{path}: is a directory, not a FASTA or FASTQ file")


@contextmanager
def _open_binary(
    path: Path | str, on_read: Callable[[int], None] | None = None
) -> Iterator[BinaryIO]:
    """The input's bytes, gunzipped when they start with gzip's magic; read once, in order."""
    _check_path(path)
    try:
        raw = nullcontext(sys.stdin.buffer) if str(path) == STDIN else open(path, "rb")
    except OSError as error:
        raise FastaError(f"{path}: cannot be opened: {error.strerror}") from None
    with raw as handle:
        magic = handle.read(len(_GZIP_MAGIC))  # read, not peeked: a pipe may deliver one byte
        stream = io.BufferedReader(_Prefixed(magic, handle, on_read or _ignored))
        yield gzip.GzipFile(fileobj=stream, mode="rb") if magic == _GZIP_MAGIC else stream


def _ignored(_: int) -> None:
    pass


class _Prefixed(io.RawIOBase):
    """Bytes already taken from a stream, then the rest of it: lets a pipe's first bytes be
    looked at without seeking back. `on_read` is told how many bytes each read gives."""

    def __init__(self, head: bytes, rest: BinaryIO, on_read: Callable[[int], None]):
        self._head = head
        self._rest = rest
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
        else:
            n = self._rest.readinto(buffer)
        self._on_read(n or 0)
        return n


class _Lines:
    """The input's decoded lines from the first non-blank one, counted: `number` is the line
    last read, which is what every error points at.

    A line is read a piece at a time and may be at most MAX_LINE_BYTES long, so that an input
    with no line break (a binary or sparse file) is refused after a bounded read, and what is
    not FASTA or FASTQ is told by the first piece of its first line."""

    def __init__(self, name: str, binary: BinaryIO):
        self.name = name
        self.number = 0
        self.started = False  # a non-blank line was read
        self._lines = self._decoded(binary)

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def _decoded(self, binary: BinaryIO) -> Iterator[str]:
        started = False  # self.started, kept local: this loop runs for every line
        try:
            for raw in iter(functools.partial(binary.readline, _PIECE), b""):
                self.number += 1
                if raw[-1] != 10:  # no "\n": the line goes on past this piece
                    raw = self._rest_of_line(binary, raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise self.error(f"not a text FASTA or FASTQ file ({error.reason})") from None
                if started or line.strip():
                    started = self.started = True
                    yield line
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            self.number += 1
            raise self.error(f"cannot be read: corrupt or truncated gzip data ({error})") from None
        except OSError as error:
            self.number += 1
            raise self.error(f"cannot be read: {error.strerror or error}") from None

    def _rest_of_line(self, binary: BinaryIO, piece: bytes) -> bytes:
        """A line longer than a piece, whole: refused as soon as its first piece shows the
        input is not FASTA or FASTQ, or once it passes MAX_LINE_BYTES."""
        found = piece.lstrip()
        if not self.started and found and found[:1] not in b">@":
            raise self.not_fasta(found[:40].decode(errors="replace"))
        pieces, size = [piece], len(piece)
        while not piece.endswith(b"\n") and (piece := binary.readline(_PIECE)):
            pieces.append(piece)
            size += len(piece)
            if size > MAX_LINE_BYTES:
                raise self.error(
                    f"line longer than {MAX_LINE_BYTES >> 20} MiB (is it FASTA or FASTQ? "
                    "a longer sequence must be wrapped over several lines)"
                )
        return b"".join(pieces)

    def error(self, message: str) -> FastaError:
        return FastaError(f"{self.name}:{self.number}: {message}")

    def not_fasta(self, found: str) -> FastaError:
        return self.error(
            "not a FASTA or FASTQ file: expected a header line starting with '>' or '@', "
            f"found {found!r}"
        )


def _fasta(lines: _Lines, first: str, alphabet: str) -> Iterator[Record]:
    headers: deque[int] = deque()  # lines of the headers read but not yet yielded as records

    def checked() -> Iterator[str]:
        """Each line checked as it is read, so that an error names its line (kept to a regex
        per line: this runs for every line of every input)."""
        header, invalid = "", line_check(alphabet)
        for line in chain([first], lines):
            if line[0] == ">":
                header = line
                headers.append(lines.number)
                if _CONTROL_IN_LINE.search(line):
                    _header_id(lines, line[1:].rstrip())
            elif invalid(line):
                record_id = _header_id(lines, header[1:].rstrip(), headers[-1])
                _check_letters(lines, record_id, line.rstrip().replace(" ", ""), alphabet)
            yield line

    for title, sequence in SimpleFastaParser(checked()):
        line = headers.popleft()
        yield Record(
            title.split(None, 1)[0] if title else _header_id(lines, "", line), sequence, line
        )


def _fastq(lines: _Lines, first: str, alphabet: str) -> Iterator[Record]:
    # The parser reads a record's header, the line after the last record, before yielding it.
    header, header_text = lines.number, first
    handle = _TextHandle(chain([first], lines))
    try:
        for title, sequence, _ in FastqGeneralIterator(handle):
            record_id = _header_id(lines, title, header)
            _check_letters(lines, record_id, sequence, alphabet, header + 1)
            yield Record(record_id, sequence, header)
            header, header_text = lines.number, handle.last
    except FastaError:
        raise
    except ValueError as error:  # Biopython's words for a malformed record
        name = header_text[1:].split(None, 1)[:1] if header_text.startswith("@") else ""
        record = f" {name[0]!r}" if name else ""
        raise FastaError(
            f"{lines.name}:{header}: malformed FASTQ record{record}: {error}"
        ) from None


class _TextHandle:
    """The text-mode handle FastqGeneralIterator asks for, over counted lines; `last` is the
    line it read last."""

    def __init__(self, lines: Iterator[str]):
        self.last = ""
        self._lines = self._remembered(lines)

    def _remembered(self, lines: Iterator[str]) -> Iterator[str]:
        for self.last in lines:
            yield self.last

    def read(self, size: int = -1) -> str:
        if size:
            raise io.UnsupportedOperation("read by lines only")
        return ""  # the parser's check that the handle is in text mode

    def readline(self) -> str:
        return next(self._lines, "")

    def __iter__(self) -> Iterator[str]:
        return self._lines


def _header_id(lines: _Lines, title: str, line: int | None = None) -> str:
    """The record id of a header, refused when it cannot go into the result tables as it is."""
    where = f"{lines.name}:{line or lines.number}"
    control = _CONTROL.search(title)
    if control:
        raise FastaError(
            f"{where}: record header {title[:40]!r} holds the control character "
            f"{control.group()!r}; headers must be printable text"
        )
    record_id = title.split(None, 1)[0] if title else ""
    if not record_id:
        raise FastaError(f"{where}: record has an empty id (a header with no name)")
    return record_id


def _check_letters(
    lines: _Lines, record_id: str, sequence: str, alphabet: str, line: int | None = None
) -> None:
    bad = first_invalid(sequence, alphabet)
    if bad:
        raise FastaError(
            f"{lines.name}:{line or lines.number}: record {record_id!r}: {bad.group()!r} is not "
            f"{EXPECTED[alphabet]}"
        )
