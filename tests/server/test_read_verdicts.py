"""low_confidence in a real run, on reads and on contigs: asked of min(--min-chunks, the chunks
a sequence has) scored chunks, so short reads are not all flagged for being short."""

from __future__ import annotations

import csv
import random

from inputs import STOP_FREE_CODONS as CODONS

from virnucpro_triton.commands.predict import predict
from virnucpro_triton.results.outputs import SUMMARY

_rng = random.Random(9)


def stop_free(length: int) -> str:
    return "".join(_rng.choices(CODONS, k=length // 3))


# id -> (sequence, low_confidence expected at chunk size 300 and --min-chunks 5)
CASES = {
    **{f"read_{i}": (stop_free(150), False) for i in range(30)},  # 1 chunk, scored
    "read_of_N": ("N" * 150, True),  # its one chunk has no frame: no_frames
    "contig_900": (stop_free(900), False),  # 3 chunks, all scored
    "contig_900_gap": (stop_free(300) + "N" * 300 + stop_free(300), True),  # 2 of 3 scored
    "contig_1200": (stop_free(1200), False),  # 4 of 4: low_confidence before this rule
    "contig_3000": (stop_free(3000), False),  # 10 chunks: 5 or more scored is enough
}


def test_reads_and_contigs_are_flagged_by_the_chunks_they_can_have(server, tmp_path):
    fastq = tmp_path / "reads.fq"
    fastq.write_text("".join(f"@{n}\n{s}\n+\n{'I' * len(s)}\n" for n, (s, _) in CASES.items()))
    summary = predict(fastq, 300, tmp_path / "out", server.grpc_url, progress=False)
    with open(tmp_path / "out" / SUMMARY, newline="") as handle:
        rows = {r["id"]: r for r in csv.DictReader(handle, delimiter="\t")}
    assert {name: rows[name]["low_confidence"] for name in CASES} == {
        name: str(low) for name, (_, low) in CASES.items()
    }
    assert rows["read_of_N"]["verdict"] == "no_frames"
    assert (rows["contig_900_gap"]["chunks"], rows["contig_900_gap"]["chunks_without_frame"]) == (
        "3",
        "1",
    )
    assert summary.verdicts["no_frames"] == 1
