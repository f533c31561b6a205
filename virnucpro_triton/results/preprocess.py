"""`virnucpro-triton preprocess`: VirNucPro's intermediate FASTA files, byte for byte."""

from __future__ import annotations

from pathlib import Path

from virnucpro_triton.fasta import read_fasta
from virnucpro_triton.records import unique_ids
from virnucpro_triton.results.outputs import atomic_files
from virnucpro_triton.sequence import chunks, six_frames

CHUNKED = "chunked.fa"
NUCLEOTIDE = "identified_nucleotide.fa"
PROTEIN = "identified_protein.faa"
_WIDTH = 60  # Biopython's SeqIO.write line width, which the original used for chunks


def preprocess(fasta: Path, chunk_size: int, out_dir: Path) -> dict[str, int]:
    """Write the chunked FASTA and the kept frames; return counts for the user."""
    counts = {"records": 0, "chunks": 0, "frames": 0}
    with atomic_files(out_dir, (CHUNKED, NUCLEOTIDE, PROTEIN)) as out:
        for record in unique_ids(read_fasta(fasta)):
            counts["records"] += 1
            for chunk_id, chunk in chunks(record.id, record.sequence, chunk_size):
                counts["chunks"] += 1
                wrapped = "\n".join(chunk[i : i + _WIDTH] for i in range(0, len(chunk), _WIDTH))
                out[CHUNKED].write(f">{chunk_id}\n{wrapped}\n")
                for frame in six_frames(chunk):
                    if frame is not None:
                        counts["frames"] += 1
                        out[NUCLEOTIDE].write(f">{chunk_id}{frame.name}\n{frame.nucleotide}\n")
                        out[PROTEIN].write(f">{chunk_id}{frame.name}\n{frame.protein}\n")
    return counts
