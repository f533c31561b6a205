"""Requests to the front door, for the tests of its limits: oversize HTTP heads, raw
exchanges, the pipeline's request, and what the server behind the door holds."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from virnucpro_triton import repository as repo
from virnucpro_triton.server import EmbeddedServer

MB = 2**20


OVERSIZE = 200 * MB  # far over the limit, as an attacker would send


def triton_pid(server: EmbeddedServer) -> int:
    """tritonserver: the door's one child."""
    door = server._proc.pid
    (triton,) = (int(p) for p in Path(f"/proc/{door}/task/{door}/children").read_text().split())
    return triton


def shm_bytes(server: EmbeddedServer) -> int:
    """Bytes the server's shared-memory regions hold in /dev/shm (allocated, not nominal)."""
    return sum(r.stat().st_blocks * 512 for r in server.shm_regions())


def pipeline_request(dna: bytes) -> list[grpcclient.InferInput]:
    element = grpcclient.InferInput(repo.DNA_CHUNKS.name, [1, 1], "BYTES")
    element.set_data_from_numpy(np.array([[dna]], dtype=np.object_))
    chunk = grpcclient.InferInput(repo.CHUNK_SIZE.name, [1, 1], "INT32")
    chunk.set_data_from_numpy(np.array([[300]], dtype=np.int32))
    return [element, chunk]


def http_exchange(url: str, head: bytes, body_chunks=()) -> tuple[int, int]:
    """Send a hand-written request head, then body chunks until the server answers or closes.
    Returns (status, body bytes sent); status 0 if the connection closed without an answer."""
    host, port = url.rsplit(":", 1)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(head)
        connection.setblocking(False)
        reply = b""
        for chunk in body_chunks:
            try:
                reply += connection.recv(65536)
            except BlockingIOError:
                pass
            if reply:
                break
            try:
                connection.setblocking(True)
                connection.sendall(chunk)
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            finally:
                connection.setblocking(False)
        connection.setblocking(True)
        try:
            while b"\r\n\r\n" not in reply and (data := connection.recv(65536)):
                reply += data
        except ConnectionResetError:
            pass
    return (int(reply.split()[1]) if reply else 0), sent


def oversize_http_head(path: str, extra: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s\r\n" % (
        path.encode(),
        extra,
    )
