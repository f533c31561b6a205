"""The cluster client with no server to reach: one clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = Path(sys.executable).with_name("virnucpro-triton")


def test_no_reachable_server_is_one_clear_error(tmp_path, mixed_fasta):
    env = {**os.environ, "NO_PROXY": "*"}
    result = subprocess.run(
        [str(CLI), "predict", str(mixed_fasta), "--chunk-size", "300", "-o", str(tmp_path)]
        + ["--url", "127.0.0.1:1", "--url", "127.0.0.1:2", "--retry-seconds", "0"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "127.0.0.1:1" in result.stderr and "127.0.0.1:2" in result.stderr
