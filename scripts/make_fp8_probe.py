"""Rebuild virnucpro_triton/export/fp8_probe.fasta.gz, the sequences FP8 is verified on.

The sources are NCBI RefSeq/GenBank records that Biopython keeps as test files (public-domain
sequence data): run with a checkout of https://github.com/biopython/biopython as the argument.
Viral: phiX174, HIV-1, two feline panleukopenia virus genes and three influenza A segments;
non-viral: the Yersinia pestis plasmid pPCP1 and the first 13 kb of the Arabidopsis thaliana
chloroplast: about as many bases of each class (23 kb). The header's second word is the class.
"""

import gzip
import sys
from pathlib import Path

from Bio import SeqIO

# (file under Tests/, its format, record ids to take, class, bases to take from each)
SOURCES = [
    ("GFF/NC_001422.gbk", "genbank", None, "viral", None),
    ("GFF/NC_001802.fna", "fasta", None, "viral", None),
    ("GenBank/gbvrl1_start.seq", "genbank", {"AB000048.1", "AB000050.1"}, "viral", None),
    ("GenBank/EU851978.gbk", "genbank", None, "viral", None),
    ("GenBank/HM138502.gbk", "genbank", None, "viral", None),
    ("GenBank/KF527485.gbk", "genbank", None, "viral", None),
    ("GenBank/NC_005816.fna", "fasta", None, "non-viral", None),
    ("GenBank/NC_000932.gb", "genbank", None, "non-viral", 13_000),
]


def main(biopython: Path, out: Path) -> None:
    lines = []
    for name, form, ids, label, take in SOURCES:
        for record in SeqIO.parse(biopython / "Tests" / name, form):
            if ids is None or record.id in ids:
                sequence = str(record.seq)[:take]
                lines += [f">{record.id} {label}", sequence]
    # mtime=0: the same bytes on every rebuild.
    out.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
