"""Client errors without a server: bad input and an unreachable server are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [str(Path(sys.executable).parent / "virnucpro-triton")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "no FASTA or FASTQ records"),
        (b"LOCUS       X 10 bp DNA\n", "not a FASTA or FASTQ file"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, content, message):
    path = tmp_path / "input.fa"
    if content is not None:
        path.write_bytes(content)
    result = subprocess.run(
        [
            *CLI,
            "predict",
            str(path),
            "--chunk-size",
            "300",
            "-o",
            str(tmp_path / "out"),
            "--url",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_unreachable_server_is_a_clear_error(mixed_fasta, tmp_path):
    result = subprocess.run(
        [
            *CLI,
            "predict",
            str(mixed_fasta),
            "--chunk-size",
            "300",
            "-o",
            str(tmp_path / "o"),
            "--url",
            "127.0.0.1:1",
            "--retry-seconds",  # else it waits 120 s for a server that may still be starting
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "cannot reach a Triton server at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
