"""Address files (`--url @FILE`, `--urls-file`, `serve --address-file`): written whole, removed
only by the server they name, read again when they change, waited for while missing."""

from __future__ import annotations

import pytest

from virnucpro_triton.client import addresses, provenance
from virnucpro_triton.client.access import Access
from virnucpro_triton.client.addresses import Address, AddressError, AddressFile


def test_an_address_file_is_read_again_when_it_changes(tmp_path):
    path = tmp_path / "server.address"
    file = AddressFile(path)
    assert file.read() == [] and "does not exist" in file.why_empty()
    addresses.write_file(path, "gpu1:8001")
    assert file.read() == [Address("gpu1", 8001)]
    addresses.write_file(path, "gpu7:40123")  # a restarted server job, elsewhere
    assert file.read() == [Address("gpu7", 40123)]
    path.write_text("# none yet\n")
    assert file.read() == [] and "holds no address" in file.why_empty()
    path.write_text("gpu1:8001\n[::1]:99999\n")
    with pytest.raises(AddressError, match=rf"^{path} line 2: server address '\[::1\]:99999'"):
        file.read()
    assert [p.name for p in tmp_path.iterdir()] == ["server.address"]  # no temporary file left
    with pytest.raises(AddressError, match="a file name goes after @"):
        addresses.source("@")


def test_a_server_removes_the_address_file_only_while_it_names_it(tmp_path):
    path = tmp_path / "server.address"
    addresses.write_file(path, "gpu1:8001")
    addresses.write_file(path, "gpu2:8001")  # the next job wrote its own
    addresses.remove_file(path, "gpu1:8001")
    assert path.read_text() == "gpu2:8001\n"
    addresses.remove_file(path, "gpu2:8001")
    assert not path.exists()
    addresses.remove_file(path, "gpu2:8001")  # gone already: nothing to do


def test_no_provenance_while_the_address_file_names_no_server():
    # A run that ends while its server job restarts: its files are written, without provenance.
    assert provenance.models([], ["virnucpro"], Access().load()) == {}
