"""Streaming FASTA input with errors that name the file, the line and the record.

Records are read by the rules of Biopython's SimpleFastaParser, in one loop that also does what
a service needs: gzip detected by content (not by suffix), a check that the file is FASTA at
all, a nucleotide alphabet check, and line numbers in every error.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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


def _parse(path: Path, handle: io.TextIOBase) -> Iterator[tuple[str, str, int]]:
    """(title, sequence, header line number) of each record.

    Biopython's SimpleFastaParser's rules: the title is the header after '>', right-stripped;
    the sequence is the record's lines right-stripped and joined, spaces and CR removed. Text
    before the first header, which that parser skips, is refused unless blank: not FASTA.
    """
    title, header, lines = None, 0, []
    for number, line in enumerate(handle, start=1):
        if line[0] == ">":
            if title is not None:
                yield title, _sequence(lines), header
            title, header, lines = line[1:].rstrip(), number, []
        elif title is not None:
            lines.append(line.rstrip())
        elif line.strip():
            raise FastaError(
                f"{path}:{number}: not a FASTA file: expected a header line "
                f"starting with '>', found {line.strip()[:40]!r}"
            )
    if title is not None:
        yield title, _sequence(lines), header


def _sequence(lines: list[str]) -> str:
    return "".join(lines).replace(" ", "").replace("\r", "")


def read_fasta(path: Path | str, alphabet: str = "dna") -> Iterator[Record]:
    """Yield the records of a FASTA file one at a time (memory stays flat).

    `alphabet` is "dna" (nucleotide FASTA, the default) or "protein".
    """
    path = Path(path)
    if not path.is_file():
        raise FastaError(f"{path}: no such file")
    try:
        with open_text(path) as handle:
            count = 0
            find_invalid = ALPHABETS[alphabet][0]
            for title, sequence, line in _parse(path, handle):
                record = Record(title.split(None, 1)[0] if title else "", sequence, line)
                if not record.id or find_invalid(sequence):
                    _refuse(path, record, alphabet)
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


def _refuse(path: Path, record: Record, alphabet: str) -> None:
    """Raise the error of a record with an empty id or a letter outside `alphabet`."""
    if not record.id:
        raise FastaError(f"{path}:{record.line}: record has an empty id ('>' alone)")
    find_invalid, expected = ALPHABETS[alphabet]
    bad = find_invalid(record.sequence)  # whitespace inside lines was removed by the parser
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
