"""What the served results are checked against: VirNucPro's computation, run in-process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer

from virnucpro_triton import repository as repo
from virnucpro_triton.models.esm2 import encode_protein
from virnucpro_triton.results.outputs import PREDICTIONS
from virnucpro_triton.sequence import chunks, six_frames

# Reference outputs of broadinstitute/virnucpro-broad (MIT, see its LICENSE), made with the
# real weights: shared/peer-data/virnucpro-broad copied in so a bare clone can test.
PEER = Path(__file__).parent / "data" / "virnucpro-broad"

# Mixed lengths: longer than a chunk, shorter than a codon, lowercase, N, empty.
MIXED = (
    ">long_contig spans several chunks\n" + "ATGGCTAGCAAAGGTAAACGTATTGCA" * 45 + "\n"
    ">tiny\nAC\n"
    ">lower soft-masked\n" + ("atgaaacgtgcagaactggcagaagcgattaaaaaagcg" * 4) + "\n"
    ">with_N\nATGAAACGTNNNCTGGCAGAAGCGATTAAAAAAGCGGCGGAAGCGATGGCGGCGAAAGGTAAAGCG\n"
    ">empty\n\n"
    ">orfs\nATGGCTAGCAAAGGTAAACGTATTGCAGAACTGAAAGAAGCGATTGAAAAACGTGCAGAACTGGCAGAA\n"
)


def read_rows(out_dir: Path) -> dict[str, tuple[str, float, float]]:
    with open(out_dir / PREDICTIONS) as handle:
        return {
            r["Sequence_ID"]: (r["Prediction"], float(r["score1"]), float(r["score2"]))
            for r in csv.DictReader(handle, delimiter="\t")
        }


@torch.inference_mode()
def in_process(repository: Path, fasta_text: str, chunk_size: int) -> dict[str, np.ndarray]:
    """VirNucPro's computation on the same weights, one frame at a time, no padding."""
    dnabert, _ = repo.load_model(repository / repo.DNABERT_S / "1")
    esm2, _ = repo.load_model(repository / repo.ESM2 / "1")
    classifier, _ = repo.load_model(repository / repo.classifier_name(chunk_size) / "1")
    tokenizer = Tokenizer.from_file(str(repository / repo.DNABERT_S / "1" / repo.TOKENIZER))
    expected = {}
    for block in fasta_text.split(">")[1:]:
        header, _, body = block.partition("\n")
        for chunk_id, chunk in chunks(header.split()[0], body.replace("\n", ""), chunk_size):
            for frame in six_frames(chunk):
                if frame is None:
                    continue
                ids = torch.tensor([tokenizer.encode(frame.nucleotide).ids])
                dna = dnabert.embed(ids, torch.ones_like(ids, dtype=torch.bool))
                protein = esm2.embed(torch.tensor([encode_protein(frame.protein)]))
                p = classifier(torch.cat([dna, protein], dim=1))[0].numpy()
                expected[chunk_id + frame.name] = p
    return expected


def worst_difference(out_dir: Path, repository: Path, fasta_text: str, chunk_size: int) -> float:
    """The largest difference between a run's probabilities (`out_dir`) and in_process's on
    `repository`; both must hold the same frames."""
    rows = read_rows(out_dir)
    expected = in_process(repository, fasta_text, chunk_size)
    assert rows.keys() == expected.keys() and rows
    return max(np.abs(np.array(rows[k][1:]) - expected[k]).max() for k in expected)


def same_table(a: bytes, b: bytes) -> bool:
    """Equal cell by cell; numbers within 1e-6, since runs sharing the server are batched (and
    padded) differently, which moves fp32 results in their last digit."""
    rows_a = [line.split("\t") for line in a.decode().splitlines()]
    rows_b = [line.split("\t") for line in b.decode().splitlines()]
    if [len(r) for r in rows_a] != [len(r) for r in rows_b]:
        return False
    for x, y in zip((c for r in rows_a for c in r), (c for r in rows_b for c in r)):
        try:
            if abs(float(x) - float(y)) > 1e-6:
                return False
        except ValueError:
            if x != y:
                return False
    return True


def score(value: float) -> str:
    """A probability as the TSV prints it."""
    return str(np.float32(value))


def tsv_cells(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def parquet_cells(path: Path) -> list[list[str]]:
    """Rows as the TSV prints them, from the Parquet file read by pyarrow alone."""
    return [
        [r["chunk_id"] + r["frame"], r["prediction"], score(r["p_others"]), score(r["p_virus"])]
        for r in pq.read_table(path).to_pylist()
    ]


def jsonl_cells(path: Path) -> list[list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        [r["chunk_id"] + r["frame"], r["prediction"], score(r["p_others"]), score(r["p_virus"])]
        for r in rows
    ]
