"""`virnucpro-triton demo`: tiny random models, one embedded server, every FASTA given."""

from __future__ import annotations

from pathlib import Path

import click

from virnucpro_triton.commands.predict import predict
from virnucpro_triton.commands.servers import start
from virnucpro_triton.export import export_repository
from virnucpro_triton.repository import CHUNK_SIZES
from virnucpro_triton.server import EmbeddedServer

WARNING = (
    "DEMO: the models have RANDOM weights, so the verdicts are meaningless. "
    "Export real checkpoints with `virnucpro-triton export` for real results."
)


def demo(repository: Path, out_dir: Path, inputs: tuple[Path, ...]) -> None:
    """Export the tiny models into `repository`, serve them, and predict every input at every
    chunk size into `out_dir`/STEM/chunkSIZE."""
    click.secho(WARNING, fg="yellow", err=True)
    export_repository(repository, tiny=True, report=click.echo)
    server = EmbeddedServer(repository)
    start(server)
    try:
        click.echo(f"embedded Triton server ready at {server.grpc_url}")
        for path in inputs:
            for size in CHUNK_SIZES:
                target = out_dir / path.stem / f"chunk{size}"
                s = predict(path, size, target, server.grpc_url, progress=False)
                click.echo(f"{path} @ {size} bp: {s.describe()} -> {target}/")
    finally:
        server.stop()
    click.secho(WARNING, fg="yellow", err=True)
