"""Inputs that are awkward to make: damaged gzip, FIFOs fed by a thread, DNA whose frames have no
stop codon; and the peak memory of a command fed one."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

from virnucpro_triton.sequence import CODON_TABLE

# Codons of DNA read in frame without a stop: joined, they make chunks whose first frame is
# kept. Sorted (ACGT order), so seeded choices from it stay the same inputs.
STOP_FREE_CODONS = sorted(codon for codon, amino in CODON_TABLE.items() if amino != "*")


def corrupt_gzip() -> bytes:
    """gzip whose deflate data is damaged: zlib itself fails ("invalid code lengths set")."""
    data = bytearray(gzip.compress(b"".join(b">r%d\n%s\n" % (i, b"ACGT" * 75) for i in range(200))))
    for i in range(12, 16):
        data[i] ^= 0x55
    return bytes(data)


def write_fifo(path: Path, content: bytes, pieces: int = 1) -> threading.Thread:
    """A FIFO at `path` fed `content` (in `pieces` writes) by a thread once a reader opens it."""
    os.mkfifo(path)

    def feed():
        with open(path, "wb", buffering=0) as fifo:
            step = -(-len(content) // pieces)
            for i in range(0, len(content), step):
                fifo.write(content[i : i + step])

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return writer


def peak_rss_mib(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run `command` from a fresh Python, whose RUSAGE_CHILDREN then holds only its peak RSS."""
    probe = (
        "import resource, subprocess, sys\n"
        "result = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(result.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(result.returncode)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=300
    )
    return result, int(result.stdout) / 1024


def reads(seed: int, count: int) -> list[str]:
    """Stop-free in several frames, of one chunk each (the reverse complement's chunk is the
    read's reverse complement)."""
    rng = random.Random(seed)
    return ["".join(rng.choices(STOP_FREE_CODONS, k=rng.randrange(40, 100))) for _ in range(count)]
