"""The FASTA files measured: contigs or reads of stop-free and random DNA, and copies of reads."""

from __future__ import annotations

import random
from pathlib import Path

from Bio import SeqIO

from tests.inputs import STOP_FREE_CODONS
from virnucpro_triton.sequence import Frame, chunks, reverse_complement, six_frames


def make_workload(
    path: Path,
    frames_wanted: int,
    chunk_size: int,
    seed: int = 0,
    lengths: tuple[int, int] | None = None,
) -> list[Frame]:
    """Write a FASTA of ORF-rich and random contigs until its chunks yield `frames_wanted`
    stop-free frames; return those frames in input order. `lengths` [lo, hi): reads of those
    lengths instead of contigs of one to four chunks."""
    rng = random.Random(seed)
    shortest, longest = lengths or (chunk_size, 4 * chunk_size)
    frames = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        n = 0
        while len(frames) < frames_wanted:
            length = rng.randrange(shortest, longest)
            if n % 4 == 3:  # random DNA: mostly no stop-free frame, as in real metagenomes
                seq = "".join(rng.choice("ACGT") for _ in range(length))
            else:
                seq = "".join(rng.choice(STOP_FREE_CODONS) for _ in range(length // 3))
            handle.write(f">contig_{n}\n{seq}\n")
            for _, chunk in chunks(f"contig_{n}", seq, chunk_size):
                frames.extend(f for f in six_frames(chunk) if f is not None)
            n += 1
    return frames


def add_duplicates(
    source: Path, target: Path, fraction: float, chunk_size: int, seed: int = 4
) -> tuple[int, int]:
    """Write `source`'s reads plus copies of random ones, so that `fraction` of all reads are
    copies, every second one reverse complemented, in shuffled order; return (reads, frames).

    A read and its reverse complement have the same six frames (F and R swapped) when it is one
    chunk long, as short reads are; reads of several chunks are chunked from the other end."""
    rng = random.Random(seed)
    originals = [(r.id, str(r.seq)) for r in SeqIO.parse(source, "fasta")]
    reads = list(originals)
    for i in range(round(len(originals) * fraction / (1 - fraction))):
        name, seq = rng.choice(originals)
        reads.append((f"{name}_copy{i}", reverse_complement(seq) if i % 2 else seq))
    rng.shuffle(reads)
    with open(target, "w") as handle:
        handle.writelines(f">{name}\n{seq}\n" for name, seq in reads)
    return len(reads), sum(frames_of(name, seq, chunk_size) for name, seq in reads)


def frames_of(name: str, seq: str, chunk_size: int) -> int:
    """The stop-free frames of a record's chunks: the rows it gets in the per-frame table."""
    return sum(
        frame is not None
        for _, chunk in chunks(name, seq, chunk_size)
        for frame in six_frames(chunk)
    )


def write_prefix(fasta: Path, target: Path, frames_wanted: int, chunk_size: int) -> int:
    """The first records of `fasta` that hold at least `frames_wanted` frames (or all of them),
    written to `target`; returns their frames."""
    frames = 0
    with open(target, "w") as handle:
        for record in SeqIO.parse(fasta, "fasta"):
            if frames >= frames_wanted:
                break
            handle.write(f">{record.id}\n{record.seq}\n")
            frames += frames_of(record.id, str(record.seq), chunk_size)
    return frames


def write_frames(frames: list[Frame], dna: Path, protein: Path) -> None:
    """The frames' nucleotides and proteins as two FASTA files, in the frames' order."""
    dna.write_text("".join(f">frame_{i}\n{f.nucleotide}\n" for i, f in enumerate(frames)))
    protein.write_text("".join(f">frame_{i}\n{f.protein}\n" for i, f in enumerate(frames)))
