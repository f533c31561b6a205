"""Replica addresses without servers: checked as typed, a bad one named in one line, and no
retry window fails at once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro_triton.client import addresses
from virnucpro_triton.client.addresses import Address, AddressError
from virnucpro_triton.client.connection import ClientError, Connection
from virnucpro_triton.repository import PIPELINE
from virnucpro_triton.results.outputs import PREDICTIONS

CLI = Path(sys.executable).with_name("virnucpro-triton")


def test_addresses_are_checked_as_typed():
    assert addresses.parse("gpu1:8001") == Address("gpu1", 8001)
    assert addresses.parse("[::1]:8001") == Address("::1", 8001)
    assert str(Address("::1", 8001)) == "[::1]:8001" and str(Address("h", 1)) == "h:1"
    cases = {
        "127.0.0.1:99999": "the port must be a number from 1 to 65535, not '99999'",
        "gpu1:0": "from 1 to 65535, not '0'",
        "gpu1:80a": "not '80a'",
        "gpu1": "no port",
        "gpu1:": "no port",
        ":8001": "no host",
        "::1:8001": "an IPv6 address goes in brackets",
        "[::1]8001": "an IPv6 address goes in brackets",
        "[gpu1]:8001": "'gpu1' in brackets is not an IPv6 address",
        "grpc://gpu1:8001": "without a scheme",
    }
    for text, why in cases.items():
        with pytest.raises(AddressError, match=re.escape(f"server address {text!r}: ")) as error:
            addresses.parse(text)
        assert why in str(error.value)
    with pytest.raises(ClientError, match="'127.0.0.1:99999': the port must be"):
        Connection("127.0.0.1:99999", PIPELINE)  # the library checks them too


def test_cli_names_a_bad_address_in_one_line(mixed_fasta, tmp_path):
    urls = tmp_path / "servers.txt"
    urls.write_text("# the cluster\n127.0.0.1:8001\n\ngpu2:65536  # typo\n")
    bad = {
        ("--url", "127.0.0.1:99999"): "--url: server address '127.0.0.1:99999': the port",
        ("--url", "::1:8001"): "--url: server address '::1:8001': an IPv6 address goes in",
        ("--urls-file", str(urls)): f"{urls} line 4: server address 'gpu2:65536': the port",
    }
    for option, message in bad.items():
        result = subprocess.run(
            [str(CLI), "predict", str(mixed_fasta), "--chunk-size", "300", "-o", str(tmp_path)]
            + list(option),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1, result
        assert result.stderr.startswith(f"virnucpro-triton: error: {message}")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / PREDICTIONS).exists()


def test_retry_seconds_0_fails_at_once_when_no_server_is_ready(tmp_path):
    with pytest.raises(ClientError, match="cannot resolve no-such-host.invalid") as error:
        Connection(["127.0.0.1:1", "no-such-host.invalid:8001"], PIPELINE, retry_seconds=0)
    assert "127.0.0.1:1: failed to connect" in str(error.value)
