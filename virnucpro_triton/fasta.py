"""Streaming FASTA input with errors that name the file, the line and the record.

Biopython's parser does the reading; this module adds what a service needs around it: gzip
detected by content (not by suffix), a check that the file is FASTA at all, a nucleotide
alphabet check, and line numbers in every error.
"""

from __future__ import annotations

import gzip
import io
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from Bio.SeqIO.FastaIO import SimpleFastaParser

from virnucpro_triton.sequence import first_invalid

_NOT_PROTEIN = re.compile(r"[^A-Za-z]")
# What each kind of input may hold, and how the error names it.
ALPHABETS: dict[str, tuple[Callable[[str], re.Match[str] | None], str]] = {
    "dna": (
        first_invalid,
        "a nucleotide code (allowed: A C G T U and the IUPAC codes N R Y S W K M B D H V)",
    ),
    "protein": (_NOT_PROTEIN.search, "an amino-acid letter"),
}


class FastaError(ValueError):
    """Input that cannot be read as nucleotide FASTA; the message is for the user as it is."""


@dataclass(frozen=True)
class Record:
    id: str  # the header up to the first whitespace (Biopython's record.id)
    sequence: str  # as written in the file (case kept), whitespace removed
    line: int  # line number of the header


def open_text(path: Path) -> io.TextIOBase:
    """Open plain or gzip-compressed text, whatever the suffix says."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline=None)
    return open(path, encoding="utf-8", newline=None)


class _HeaderLines:
    """Feeds lines to the parser, checks the first one and remembers where headers are."""

    def __init__(self, path: Path, handle: io.TextIOBase):
        self.path = path
        self.handle = handle
        self.headers: deque[int] = deque()  # header lines read but not yet yielded as records
        # The parser iterates its handle twice (first header, then the rest): one generator.
        self._lines = self._read()

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def _read(self) -> Iterator[str]:
        seen_content = False
        for number, line in enumerate(self.handle, start=1):
            if not seen_content:
                if not line.strip():
                    continue
                if not line.startswith(">"):
                    raise FastaError(
                        f"{self.path}:{number}: not a FASTA file: expected a header line "
                        f"starting with '>', found {line.strip()[:40]!r}"
                    )
                seen_content = True
            if line.startswith(">"):
                self.headers.append(number)
            yield line


def read_fasta(path: Path | str, alphabet: str = "dna") -> Iterator[Record]:
    """Yield the records of a FASTA file one at a time (memory stays flat).

    `alphabet` is "dna" (nucleotide FASTA, the default) or "protein".
    """
    path = Path(path)
    if not path.is_file():
        raise FastaError(f"{path}: no such file")
    try:
        with open_text(path) as handle:
            lines = _HeaderLines(path, handle)
            count = 0
            for title, sequence in SimpleFastaParser(lines):
                record = Record(
                    title.split(None, 1)[0] if title else "", sequence, lines.headers.popleft()
                )
                _check(path, record, alphabet)
                count += 1
                yield record
    except UnicodeDecodeError as error:
        # error.start counts from the decoder's 8 KiB buffer, not the file: name the line instead.
        raise FastaError(
            f"{path}:{_undecodable_line(path)}: not a text FASTA file ({error.reason})"
        ) from None
    except (EOFError, OSError) as error:  # truncated or corrupt gzip, unreadable file
        raise FastaError(f"{path}: cannot be read: {error}") from None
    if count == 0:
        raise FastaError(f"{path}: no FASTA records (the file is empty)")


def _check(path: Path, record: Record, alphabet: str) -> None:
    if not record.id:
        raise FastaError(f"{path}:{record.line}: record has an empty id ('>' alone)")
    find_invalid, expected = ALPHABETS[alphabet]
    bad = find_invalid(record.sequence)  # whitespace inside lines was removed by the parser
    if bad:
        line = _line_of(path, record.line, bad.group())
        raise FastaError(f"{path}:{line}: record {record.id!r}: {bad.group()!r} is not {expected}")


def _undecodable_line(path: Path) -> int:
    """Line of the first byte that is not UTF-8; only read again when reporting an error."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _line_of(path: Path, header_line: int, char: str) -> int:
    """Line of the first `char` after a header; only read again when reporting an error."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if number > header_line and char in line:
                return number
    return header_line
