"""The letters a sequence may hold: one definition for the reader, the client and the server.

Every check of input letters (the FASTA/FASTQ reader, the client before it sends, the served
pipeline and embedders before they compute) reads this module, so what one part accepts no
other part refuses.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

DNA = "dna"
PROTEIN = "protein"
# Either case: A C G T, U (RNA, read as T) and the IUPAC ambiguity codes (a codon holding one is
# dropped by the translation, as VirNucPro does; DNABERT-S's tokenizer maps them to [UNK]).
NUCLEOTIDE_CODES = "ACGTUNRYSWKMBDHV"
# The IUPAC one-letter amino-acid codes are the 26 letters (B J O U X Z included); ESM-2's
# tokenizer maps those outside its vocabulary to <unk>.
PROTEIN_LETTERS = string.ascii_uppercase

_LETTERS = {
    DNA: NUCLEOTIDE_CODES + NUCLEOTIDE_CODES.lower(),
    PROTEIN: PROTEIN_LETTERS + PROTEIN_LETTERS.lower(),
}
_INVALID = {alphabet: re.compile(f"[^{letters}]") for alphabet, letters in _LETTERS.items()}
# A sequence line as read from a file: the spaces and line ends that parsers strip pass too.
_INVALID_IN_LINE = {a: re.compile(f"[^{letters} \r\n]") for a, letters in _LETTERS.items()}
# What an invalid letter is not, for messages: "'1' is not <EXPECTED>".
EXPECTED = {
    DNA: "a nucleotide code (allowed: A C G T U and the IUPAC codes N R Y S W K M B D H V)",
    PROTEIN: "an amino-acid letter (one-letter codes A-Z)",
}
# Plain bases only: a protein is never made of these alone, while many proteins are made of
# IUPAC nucleotide codes (M K V D H ... are amino acids too).
_PLAIN_BASES = re.compile("[ACGTUNacgtun]+")


def first_invalid(sequence: str, alphabet: str = DNA) -> re.Match[str] | None:
    """Where `sequence` holds a character outside `alphabet` (DNA or PROTEIN), if anywhere."""
    return _INVALID[alphabet].search(sequence)


def line_check(alphabet: str = DNA) -> Callable[[str], re.Match[str] | None]:
    """first_invalid for raw sequence lines (spaces and the line end pass), as one bound
    method: the reader calls it on every line."""
    return _INVALID_IN_LINE[alphabet].search


def nucleotides_only(sequence: str) -> bool:
    """Whether a sequence given as protein looks like DNA or RNA instead."""
    return _PLAIN_BASES.fullmatch(sequence) is not None


def as_dna(sequence: str) -> str:
    """Upper case, RNA's U read as T: what translation and DNABERT-S's tokenizer take."""
    return sequence.upper().replace("U", "T")
