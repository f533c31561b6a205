"""Input records as the client processes them: unique ids, chunked."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from virnucpro_triton.fasta import Record


@dataclass(frozen=True)
class InputRecord:
    index: int  # position in the input file, from 0
    id: str  # unique within the run (see unique_ids)
    sequence: str


def unique_ids(records: Iterable[Record]) -> Iterator[InputRecord]:
    """Give every record an id of its own.

    Paired-end mates and other duplicates must not be merged or overwrite each other: the
    n-th record carrying an id already used is renamed `{id}#n` (n = 2, 3, ...; skipping
    names that are taken), and the new id is what every output file shows.
    """
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        name = record.id
        if name in seen:
            n = seen[name]
            while f"{record.id}#{n}" in seen:
                n += 1
            seen[record.id] = n + 1
            name = f"{record.id}#{n}"
        seen[name] = 2
        yield InputRecord(index, name, record.sequence)
