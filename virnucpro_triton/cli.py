"""The `virnucpro-triton` command line."""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import click

from virnucpro_triton.credentials import (
    TLS_CA_ENV,
    TLS_CLIENT_CERT_ENV,
    TLS_CLIENT_KEY_ENV,
    TOKEN_FILE_ENV,
)
from virnucpro_triton.door.settings import FILE_OPTIONS, FLAG_OPTIONS, AccessSettings
from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.repository import (
    CHUNK_SIZES,
    DNABERT_S,
    ESM2,
    FP8_ALL,
    FP8_AUTO,
    FP8_FEED_FORWARD,
    FP8_NONE,
    MAX_BATCH_CHUNKS,
    check_entries,
    pipeline_entries,
)

DEFAULT_REPOSITORY = Path("model_repository")
_chunk_size = click.option(
    "--chunk-size",
    type=click.Choice([str(s) for s in CHUNK_SIZES]),
    required=True,
    help="Chunk length in bp; must match the classifier "
    f"({' or '.join(f'{s}_model.pth' for s in CHUNK_SIZES)}).",
)


class _OwnedDefault(click.Option):
    """An option whose `default` is a function returning the value its owner defines, called
    when a command's options are parsed or shown: the owners import numpy, tritonclient or
    matplotlib, which the CLI must not wait for before it knows the command."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, show_default=True, **kwargs)

    def get_default(self, ctx: click.Context, call: bool = True):
        return self.default()

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        if isinstance(value := self.default(), float):
            extra["default"] = f"{value:g}"  # 120, not 120.0
        return extra


def _connection():
    from virnucpro_triton.client import connection

    return connection


def _classify():
    from virnucpro_triton.client import classify

    return classify


def _thresholds():
    from virnucpro_triton.results.evidence import DEFAULT_THRESHOLDS

    return DEFAULT_THRESHOLDS


def _log_to_stderr() -> None:
    """The client's warnings (a server out of rotation) as one-liners on stderr."""
    logging.basicConfig(format="virnucpro-triton: %(message)s", level=logging.WARNING)


def _fail(message: str) -> None:
    """One line on stderr and exit status 1: no traceback for problems the user can fix."""
    click.echo(f"virnucpro-triton: error: {message}", err=True)
    sys.exit(1)


# Where a command is stopped, this function (ctx.meta) says whether `--resume` goes on from
# its journal.
_RESUMABLE = "virnucpro_triton.resumable"


class _Commands(click.Group):
    def invoke(self, ctx: click.Context):
        """Every command: a problem the user can fix (VirnucproError, OSError) is one line on
        stderr and exit status 1; Ctrl-C, SIGTERM and SIGHUP stop it cleanly (interrupt.py), say
        so in one line and exit with 128 + the signal's number (130, 143, 129)."""
        from virnucpro_triton.interrupt import Interrupted, stop_signals_interrupt

        try:
            with stop_signals_interrupt():
                return super().invoke(ctx)
        except KeyboardInterrupt as stop:
            stop = stop if isinstance(stop, Interrupted) else Interrupted(signal.SIGINT)
            resumable = ctx.meta.get(_RESUMABLE)
            hint = "; the same command with --resume goes on from here" * bool(
                resumable and resumable()
            )
            click.echo(f"virnucpro-triton: stopped by {stop}{hint}", err=True)
            sys.exit(stop.exit_status)
        except BrokenPipeError:
            raise  # a closed stdout (`| head`): click ends quietly, as the reader wanted
        except (VirnucproError, OSError) as error:
            resumable = ctx.meta.get(_RESUMABLE)
            resumable = getattr(error, "resumable", True) and resumable and resumable()
            _fail(f"{error}{'; --resume goes on from here' if resumable else ''}")


# FASTA or FASTQ, plain or gzip (by content); `-` reads standard input, and pipes are read once.
_input = click.argument("fasta", type=click.Path(allow_dash=True, path_type=Path))
_progress = click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="virnucpro-triton", prog_name="virnucpro-triton")
@click.pass_context
def main(ctx: click.Context) -> None:
    """VirNucPro viral DNA classification served by NVIDIA Triton Inference Server."""
    if ctx.invoked_subcommand in _GRPC_CLIENTS:
        # Before their options import gRPC: its C core logs a failed TLS handshake on stderr
        # itself, in lines beside the one the client says it in (a GRPC_VERBOSITY set stays).
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


_GRPC_CLIENTS = ("predict", "embed")


@main.command()
@_input
@_chunk_size
@click.option("--out-dir", type=click.Path(path_type=Path), required=True)
def preprocess(fasta: Path, chunk_size: str, out_dir: Path) -> None:
    """Write VirNucPro's chunked.fa, identified_nucleotide.fa and identified_protein.faa."""
    from virnucpro_triton.results.preprocess import preprocess as run

    counts = run(fasta, int(chunk_size), out_dir)
    click.echo(
        f"{counts['records']} records -> {counts['chunks']} chunks -> "
        f"{counts['frames']} stop-free frames, written to {out_dir}/"
    )


def _access_options(command):
    """The access token and TLS options of the door (door/settings.py), each file also taken
    from its environment variable."""
    for option, help_text in reversed(FLAG_OPTIONS.items()):
        command = click.option(option, is_flag=True, help=help_text)(command)
    for option, (variable, help_text) in reversed(FILE_OPTIONS.items()):
        path = click.Path(dir_okay=False, path_type=Path)
        command = click.option(
            option, type=path, envvar=variable, show_envvar=True, help=help_text
        )(command)
    return command


@main.command()
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    show_default=True,
    help="Model repository directory (written by `export`).",
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback needs --token-file (or --no-auth).",
)
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="0: a free port.")
@click.option("--http-port", type=int, default=8000, show_default=True, help="0: a free port.")
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="0: a free port.")
@click.option(
    "--address-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Once every model is ready, write the gRPC HOST:PORT here (atomically), and remove "
    "it on stopping if it still names this server: clients given --url @FILE find the server "
    "wherever it runs (a SLURM job, slurm/serve.sbatch).",
)
@_access_options
def serve(
    repository: Path,
    address: str,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    address_file: Path | None,
    **access: object,
) -> None:
    """Run the embedded Triton server in the foreground until Ctrl-C, SIGTERM or SIGHUP."""
    from virnucpro_triton.client import addresses
    from virnucpro_triton.credentials import CredentialsError

    try:
        from virnucpro_triton.door.access import Guard
    except ModuleNotFoundError as error:  # a client-only install
        _fail(f"serve needs {error.name}: pip install 'virnucpro-triton[server]'")
    from virnucpro_triton.commands.servers import start
    from virnucpro_triton.server import EmbeddedServer

    settings = AccessSettings.of(access)
    try:
        if problem := settings.exposure_problem([address]):
            raise CredentialsError(problem)
        guard = Guard.of(settings)  # its files read and checked before the server starts
    except CredentialsError as error:
        click.echo(f"virnucpro-triton: error: {error}", err=True)
        sys.exit(2)  # as the door and a usage error
    check_entries(repository, ())
    server = EmbeddedServer(
        repository,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        address=address,
        access=settings,
    )
    start(server)
    # A wildcard address is no address a client on another machine can use: the host's name is.
    advertised = server.grpc_url
    if address in ("0.0.0.0", "::"):
        advertised = addresses.join(socket.gethostname(), server.ports["gRPC"])
    try:
        if address_file:
            addresses.write_file(address_file, advertised)
        click.echo(
            f"serving {repository} — gRPC {advertised}, HTTP {server.http_url}"
            f"{guard.description()}; log {server.log_path}; Ctrl-C stops"
            + (f"; address in {address_file}" if address_file else "")
        )
        code = server.wait()
    finally:
        if address_file:  # its clients wait for the next server to write its own
            addresses.remove_file(address_file, advertised)
        server.stop()
    if code:
        _fail(f"the server exited with status {code}; see {server.log_path}")


def _server_options(command):
    """--url (repeatable), --urls-file, --repository, --retry-seconds, --resolve-seconds,
    --max-message-mb, and the access options: --token-file, --tls, --tls-ca, --tls-client-cert,
    --tls-client-key."""
    pem = click.Path(dir_okay=False, path_type=Path)  # read, checked, by client/access.py
    options = [
        click.option(
            "--url",
            "urls",
            multiple=True,
            help="gRPC address HOST:PORT ([IPv6]:PORT) of a running server; repeat it to spread "
            "the work over several. A name stands for every address it resolves to (e.g. a "
            "Kubernetes headless Service: one per ready pod). @FILE: the addresses in FILE, read "
            "again when it changes (a server job's address file, see `serve --address-file`). "
            "Without any, an embedded server is started on --repository for this run.",
        ),
        click.option(
            "--urls-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="A file of HOST:PORT addresses, one per line (# starts a comment), read again "
            "when it changes; the same as --url @FILE. While it is missing or empty (a server "
            "job starting), it is waited for up to --retry-seconds.",
        ),
        click.option(
            "--repository",
            type=click.Path(path_type=Path),
            default=DEFAULT_REPOSITORY,
            show_default=True,
        ),
        click.option(
            "--retry-seconds",
            type=click.FloatRange(min=0),
            cls=_OwnedDefault,
            default=lambda: _connection().RETRY_SECONDS,
            help="How long a request is sent again while no server can answer it (unreachable, "
            "restarting, overloaded), and how long servers still starting are waited for; "
            "0: fail at once.",
        ),
        click.option(
            "--resolve-seconds",
            type=click.FloatRange(min=0),
            cls=_OwnedDefault,
            default=lambda: _connection().RESOLVE_SECONDS,
            help="How often server names are resolved again and address files read again, so "
            "that replicas that appear get work and those that vanish leave the rotation; 0: "
            "only at the start (an address file also when a server fails).",
        ),
        click.option(
            "--max-message-mb",
            type=click.IntRange(1, 2047),
            cls=_OwnedDefault,
            default=lambda: _connection().MAX_MESSAGE_MB,
            help="gRPC message size limit, both ways.",
        ),
        click.option(
            "--token-file",
            type=pem,
            envvar=TOKEN_FILE_ENV,
            show_envvar=True,
            help="File holding the access token the servers ask for (its first token). Never "
            "give a token itself on a command line.",
        ),
        click.option(
            "--tls",
            is_flag=True,
            help="Speak TLS to the servers, trusting the system's CAs (see --tls-ca).",
        ),
        click.option(
            "--tls-ca",
            type=pem,
            envvar=TLS_CA_ENV,
            show_envvar=True,
            help="PEM bundle of the CAs the servers' certificates must chain to; implies --tls.",
        ),
        click.option(
            "--tls-client-cert",
            type=pem,
            envvar=TLS_CLIENT_CERT_ENV,
            show_envvar=True,
            help="PEM certificate (chain) of this client, for servers that ask for one (mutual "
            "TLS); implies --tls.",
        ),
        click.option(
            "--tls-client-key",
            type=pem,
            envvar=TLS_CLIENT_KEY_ENV,
            show_envvar=True,
            help="PEM key of --tls-client-cert (unencrypted).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _access(addresses: list[str], token_file, tls, tls_ca, tls_client_cert, tls_client_key):
    """The access options as a checked client Access, its files read once now (before any
    server is started)."""
    from virnucpro_triton.client.access import Access

    access = Access(
        token_file=token_file,
        tls=tls,
        ca=tls_ca,
        client_cert=tls_client_cert,
        client_key=tls_client_key,
    )
    if access.tls and not addresses:
        _fail(
            "--tls and its files (or their VIRNUCPRO_TLS_ variables) are for servers given by "
            "--url: the embedded server started without --url speaks plain text on 127.0.0.1"
        )
    access.load()
    return access


def _addresses(urls: tuple[str, ...], urls_file: Path | None) -> list[str]:
    """The --url addresses and --urls-file as @FILE, each checked as HOST:PORT (an address
    file's lines as they are now: it may not be written yet)."""
    from virnucpro_triton.client.addresses import FILE_PREFIX, AddressError, AddressFile, source

    addresses = [*urls, *([f"{FILE_PREFIX}{urls_file}"] if urls_file else [])]
    for address in addresses:
        try:
            given = source(address)
            if isinstance(given, AddressFile):
                given.read()  # its errors name the file and line
        except AddressError as error:
            raise AddressError(f"--url: {error}" if address in urls else str(error)) from None
    return addresses


@main.command()
@_input
@_chunk_size
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), required=True)
@_server_options
@click.option(
    "--batch-chunks",
    type=click.IntRange(1, MAX_BATCH_CHUNKS),
    cls=_OwnedDefault,
    default=lambda: _classify().BATCH_CHUNKS,
    help="Chunks per request.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, 256),
    help="Requests awaiting an answer at any time [default: 4 per server].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Go on from where a stopped run into the same OUT_DIR stopped (same input, same "
    "chunk size); answers already received are not asked again.",
)
@_progress
@click.option(
    "--format",
    "frame_format",
    type=click.Choice(["tsv", "parquet", "jsonl"]),
    default="tsv",
    show_default=True,
    help="Per-frame table: tsv is VirNucPro's prediction_results.txt; parquet and jsonl "
    "(prediction_results.parquet/.jsonl) hold the same rows with the ids in columns.",
)
@click.option(
    "--viral-above",
    type=click.FloatRange(-1, 1),
    cls=_OwnedDefault,
    default=lambda: _thresholds().viral_above,
    help="Weighted score above which a sequence is called viral.",
)
@click.option(
    "--nonviral-below",
    type=click.FloatRange(-1, 1),
    cls=_OwnedDefault,
    default=lambda: _thresholds().nonviral_below,
    help="Weighted score below which a sequence is called nonviral.",
)
@click.option(
    "--min-chunks",
    type=click.IntRange(min=0),
    cls=_OwnedDefault,
    default=lambda: _thresholds().min_chunks,
    help="Verdicts resting on fewer chunks with a stop-free frame than this, or than the "
    "sequence has if it has fewer, are flagged low-confidence.",
)
@click.option(
    "--min-length",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Records shorter than this (bp) are not sent: their summary verdict is too_short.",
)
@click.option(
    "--report", "with_report", is_flag=True, help="Also write report.html (see `report`)."
)
def predict(
    fasta: Path,
    chunk_size: str,
    out_dir: Path,
    urls: tuple[str, ...],
    urls_file: Path | None,
    repository: Path,
    retry_seconds: float,
    resolve_seconds: float,
    max_message_mb: int,
    token_file: Path | None,
    tls: bool,
    tls_ca: Path | None,
    tls_client_cert: Path | None,
    tls_client_key: Path | None,
    batch_chunks: int,
    max_in_flight: int | None,
    resume: bool,
    progress: bool | None,
    frame_format: str,
    viral_above: float,
    nonviral_below: float,
    min_chunks: int,
    min_length: int,
    with_report: bool,
) -> None:
    """Classify FASTA or FASTQ (plain or gzip; `-`: stdin) into VirNucPro's files in OUT_DIR.

    OUT_DIR ends up holding this run's files only: those an earlier run left there (another
    --format's table, report.html) are removed when the run completes; other files are kept."""
    addresses = _addresses(urls, urls_file)
    access = _access(addresses, token_file, tls, tls_ca, tls_client_cert, tls_client_key)
    if not addresses:
        check_entries(repository, pipeline_entries(int(chunk_size)))  # before anything slow
    from virnucpro_triton.commands.predict import predict as run
    from virnucpro_triton.commands.servers import given_or_embedded
    from virnucpro_triton.fasta import check_input
    from virnucpro_triton.results import journal
    from virnucpro_triton.results.evidence import Thresholds

    _log_to_stderr()
    thresholds = Thresholds(viral_above, nonviral_below, min_chunks)
    # From here, an error or a stop says whether --resume can go on from the run's journal.
    click.get_current_context().meta[_RESUMABLE] = functools.partial(
        journal.resumable, out_dir / journal.NAME, fasta, int(chunk_size), min_length
    )
    check_input(fasta)  # refuse a missing or non-FASTA file before starting a server
    with given_or_embedded(addresses, repository) as (servers, start_seconds):
        summary = run(
            fasta,
            int(chunk_size),
            out_dir,
            servers,
            batch_chunks=batch_chunks,
            max_in_flight=max_in_flight,
            progress=progress,
            retry_seconds=retry_seconds,
            resolve_seconds=resolve_seconds,
            max_message_mb=max_message_mb,
            resume=resume,
            thresholds=thresholds,
            frame_format=frame_format,
            start_seconds=start_seconds,
            min_length=min_length,
            access=access,
        )
    click.echo(f"{summary.report()}\nresults: {out_dir}/")
    if with_report:
        _write_report(out_dir, _report().TOP)


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--top",
    type=click.IntRange(0, 1000),
    cls=_OwnedDefault,
    default=lambda: _report().TOP,
    help="Sequences drawn chunk by chunk: the best-scored of those with enough evidence.",
)
def report(out_dir: Path, top: int) -> None:
    """Write OUT_DIR/report.html about a `predict` run: verdicts, P(virus), tracks, throughput."""
    _write_report(out_dir, top)


def _report():
    from virnucpro_triton.results import report

    return report


def _write_report(out_dir: Path, top: int) -> None:
    click.echo(f"report: {_report().write_report(out_dir, top)}")


@main.command()
@_input
@click.option(
    "--model",
    type=click.Choice([DNABERT_S, ESM2]),
    required=True,
    help="dnabert_s embeds DNA records (768-d), esm2 protein records (2560-d for the 3B model).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output .npy (float32, one row per record, input order); ids go to OUT.ids.txt.",
)
@_server_options
@_progress
def embed(
    fasta: Path,
    model: str,
    out: Path,
    urls: tuple[str, ...],
    urls_file: Path | None,
    repository: Path,
    retry_seconds: float,
    resolve_seconds: float,
    max_message_mb: int,
    token_file: Path | None,
    tls: bool,
    tls_ca: Path | None,
    tls_client_cert: Path | None,
    tls_client_key: Path | None,
    progress: bool | None,
) -> None:
    """Pooled DNABERT-S or ESM-2 embedding of every record, through the server."""
    addresses = _addresses(urls, urls_file)
    access = _access(addresses, token_file, tls, tls_ca, tls_client_cert, tls_client_key)
    if not addresses:
        check_entries(repository, (model,))
    from virnucpro_triton.commands.embed import ALPHABET, ids_path
    from virnucpro_triton.commands.embed import embed as run
    from virnucpro_triton.commands.servers import given_or_embedded
    from virnucpro_triton.fasta import check_input

    _log_to_stderr()
    check_input(fasta, ALPHABET[model])
    with given_or_embedded(addresses, repository) as (servers, _):
        count, dim = run(
            fasta,
            model,
            out,
            servers,
            retry_seconds=retry_seconds,
            resolve_seconds=resolve_seconds,
            max_message_mb=max_message_mb,
            progress=progress,
            access=access,
        )
    click.echo(f"{count} x {dim} embeddings -> {out} (ids: {ids_path(out)})")


def _classifier_options(command):
    """--classifier-300, --classifier-500: one per chunk size of the contract."""
    for size in reversed(CHUNK_SIZES):
        path = click.Path(exists=True, dir_okay=False, path_type=Path)
        command = click.option(f"--classifier-{size}", type=path)(command)
    return command


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    show_default=True,
    help="Model repository to write entries into.",
)
@click.option(
    "--dnabert-s",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="DNABERT-S model directory (config.json, weights, tokenizer.json).",
)
@click.option(
    "--esm2",
    type=click.Path(exists=True, path_type=Path),
    help="fair-esm .pt checkpoint (esm2_t36_3B_UR50D.pt) or Hugging Face ESM directory.",
)
@_classifier_options
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="Weights of the embedding models (classifiers stay fp32).",
)
@click.option(
    "--fp8",
    type=click.Choice([FP8_NONE, FP8_AUTO, FP8_FEED_FORWARD, FP8_ALL]),
    default=FP8_NONE,
    show_default=True,
    help="ESM-2's linear layers in FP8 on GPUs that have it (sm_89+, e.g. H100; others serve "
    "bf16). auto: the layers that keep cosine >= 0.999 and 99.5% of verdicts against bf16 on "
    "the probe frames, decided on these weights; feed_forward/all: those layers, refused when "
    "they miss that rule. Needs --dtype bf16, and DNABERT-S and a classifier exported with it "
    "or before it.",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    show_default=True,
    help="torch: weights served by the Python backend (runs here and in any Triton). "
    "onnx: fp32 ONNX graphs for the onnxruntime backend of the NGC Triton container.",
)
@click.option(
    "--batch-invariant",
    is_flag=True,
    help="Entries whose every result is the same bytes whatever else shares its batch: runs, "
    "--batch-chunks, concurrent clients and servers all agree. Costs throughput (README, What "
    "is identical between runs). Needs --format torch; export all entries with it.",
)
@click.option("--tiny", is_flag=True, help="Tiny random-weight models for demos and tests.")
def export(
    out: Path,
    dnabert_s: Path | None,
    esm2: Path | None,
    dtype: str,
    fp8: str,
    format_: str,
    batch_invariant: bool,
    tiny: bool,
    **classifier_paths: Path | None,
) -> None:
    """Write verified model-repository entries from local checkpoints."""
    try:
        from virnucpro_triton.export import export_repository
    except ModuleNotFoundError as error:  # a client-only install
        _fail(f"export needs {error.name}: pip install 'virnucpro-triton[export]'")

    paths = {size: classifier_paths[f"classifier_{size}"] for size in CHUNK_SIZES}
    classifiers = {size: path for size, path in paths.items() if path}
    export_repository(
        out,
        dnabert_s=dnabert_s,
        esm2=esm2,
        classifiers=classifiers,
        dtype=dtype,
        fp8=fp8,
        format=format_,
        batch_invariant=batch_invariant,
        tiny=tiny,
        report=click.echo,
    )


@main.command()
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=Path("build/demo_repository"),
    show_default=True,
)
@click.option(
    "--out-dir", type=click.Path(path_type=Path), default=Path("results/demo"), show_default=True
)
@click.argument("fasta", nargs=-1, type=click.Path(path_type=Path))
def demo(repository: Path, out_dir: Path, fasta: tuple[Path, ...]) -> None:
    """Tiny random models, one embedded server, every FASTA given (default examples/*.fasta)."""
    try:
        from virnucpro_triton.commands.demo import demo as run
    except ModuleNotFoundError as error:  # a client-only install
        _fail(f"demo needs {error.name}: pip install 'virnucpro-triton[server,export]'")
    run(repository, out_dir, fasta or tuple(sorted(Path("examples").glob("*.fasta"))))


if __name__ == "__main__":
    main()
