"""Address files against a real server: `predict --url @FILE` waits for its address file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from servers import wait_for

from virnucpro_triton.client import addresses
from virnucpro_triton.results.outputs import SUMMARY

CLI = Path(sys.executable).with_name("virnucpro-triton")


def test_predict_waits_for_its_address_file(server, mixed_fasta, tmp_path):
    path, out, stderr = tmp_path / "server.address", tmp_path / "out", tmp_path / "stderr"
    command = [CLI, "predict", mixed_fasta, "--chunk-size", "300", "-o", out, "--no-progress"]
    command += ["--url", f"@{path}", "--retry-seconds", "600", "--resolve-seconds", "1"]
    with open(stderr, "w") as err:
        client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: "does not exist (yet)" in stderr.read_text() or client.poll() is not None)
        assert client.poll() is None, stderr.read_text()  # missing: waited for
        addresses.write_file(path, server.grpc_url)  # a server job ready at last
        assert client.wait(timeout=300) == 0, stderr.read_text()
    finally:
        if client.poll() is None:
            client.kill()
    assert (out / SUMMARY).exists()
