"""`make bench`: the served pipeline against VirNucPro's own way and the in-process way, in one run.

Builds the full-size architectures with random weights (speed does not depend on the values),
writes them into a model repository, and on the same frames measures
  (a) VirNucPro's own way (virnucpro_own.py): fair-esm ESM-2 in fp32 in batches of 2,048
      tokens, DNABERT-S in fp32 one sequence at a time, on a prefix of the frames;
  (b) in-process: DNABERT-S + ESM-2 + classifier resident on the GPU, batches of 256 frames in
      input order, padded, SDPA attention, bf16 — how the reference tools run;
  (c) served: FASTA -> client -> embedded tritonserver -> pipeline -> result files;
  (d) models alone: the entries' embedders without the server (`models_alone`);
and reports frames/s, the ratios c/a, c/b and c/d, GPU memory peak, GPU busy % and an MFU
estimate, and how far the served embeddings of the first frames are from VirNucPro's own.
`--invariance` (on by default; invariance.py) also measures batch invariance: rows that move
between two identical served runs and between one chunk per request and --batch-chunks, the
first module that computes a row differently in a batch than alone, and the same with every
entry batch-invariant, served on the same frames: its frames/s over (c)'s. Both modes are then
served with the embedders' cache off (a repeated run would take every embedding from it), (c)
too: its runs are the default mode's.
On a GPU with FP8 it lets `export --fp8 auto`'s check choose ESM-2's FP8 layers for these
weights, serves again with them and reports how far verdicts and embeddings move. `--tiny` runs
the same on the demo-size models in fp32 (the CPU smoke run in the tests).
`--duplicate-fraction F` also serves reads of which F are copies of others (half of them reverse
complements), with the embedders' cache of embeddings off and on, and the same reads without the
copies. Every served run reports the CPU seconds of the server, each entry's stubs and the client.

Run from the repository's root: `python -m benchmarks.bench --help`. The measurements that
docs/performance.md quotes are kept in docs/measurements/.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import torch

from benchmarks import report
from benchmarks.in_process import in_process, models_alone
from benchmarks.invariance import batch_invariance, repeat_runs
from benchmarks.random_models import balance_classifier, build_repository
from benchmarks.served import ServedRun, agreement, duplicate_runs, served, served_fp8, verdicts
from benchmarks.virnucpro_own import embedding_difference, virnucpro_own
from benchmarks.workload import make_workload, write_frames
from tests.repository_edits import set_embedding_cache
from virnucpro_triton import repository as repo
from virnucpro_triton.models.fp8 import fp8_unavailable

H100_BF16_DENSE_TFLOPS = 989.0  # spec sheet, SXM
# Frames whose served embeddings are held against VirNucPro's own.
PROBE_FRAMES = 64


@click.command()
@click.option("--tiny", is_flag=True, help="Demo-size models (CPU smoke run).")
@click.option(
    "--chunk-size",
    "chunk_sizes",
    type=click.Choice([str(s) for s in repo.CHUNK_SIZES]),
    multiple=True,
    help="Measure only these chunk sizes (default: all).",
)
@click.option("--frames", type=int, default=20_000, show_default=True, help="Per chunk size.")
@click.option(
    "--virnucpro-frames",
    type=click.IntRange(1),
    default=2_000,
    show_default=True,
    help="VirNucPro's own way runs on this many of the frames (the first): it is the slowest.",
)
@click.option(
    "--batch-chunks",
    type=int,
    default=512,
    show_default=True,
    help="Chunks per request: what the README recommends for a GPU server.",
)
@click.option("--in-flight", type=int, default=32, show_default=True)
@click.option(
    "--gpu-scaling",
    is_flag=True,
    help="Also serve from the first GPU alone, for the speed-up of all GPUs over one.",
)
@click.option(
    "--fp8/--no-fp8",
    default=None,
    help="Also serve with the FP8 layers that `export --fp8 auto` verifies for these weights and "
    "measure how far results move (default: when the GPU has FP8).",
)
@click.option(
    "--duplicate-fraction",
    type=click.FloatRange(0, 0.9),
    default=0.0,
    help="Also serve reads of which this share are copies (half reverse complements), "
    "embedding cache off and on, against the same reads without copies.",
)
@click.option(
    "--invariance/--no-invariance",
    default=True,
    show_default=True,
    help="Also measure batch invariance (issue 28): rows that move between identical served runs "
    "and between one chunk per request and --batch-chunks, the first module that computes a row "
    "differently in a batch than alone, and the batch-invariant mode served on the same frames.",
)
@click.option(
    "--one-chunk-frames",
    type=click.IntRange(1),
    default=1_000,
    show_default=True,
    help="Sent one chunk per request (slow) for --invariance: the records holding this many of "
    "the first frames.",
)
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("build/bench"))
@click.option(
    "--json-out",
    type=click.Path(path_type=Path),
    default=Path("build/bench.json"),
    show_default=True,
    help="The report (docs/measurements/ keeps those docs/performance.md quotes).",
)
def main(
    tiny: bool,
    chunk_sizes: tuple[str, ...],
    frames: int,
    virnucpro_frames: int,
    batch_chunks: int,
    in_flight: int,
    gpu_scaling: bool,
    fp8: bool | None,
    duplicate_fraction: float,
    invariance: bool,
    one_chunk_frames: int,
    work_dir: Path,
    json_out: Path,
) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    no_fp8 = fp8_unavailable(device)
    if fp8 is None:
        fp8 = no_fp8 is None
    elif fp8 and no_fp8:
        raise click.UsageError(f"--fp8: {no_fp8}")
    work_dir.mkdir(parents=True, exist_ok=True)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    repository = work_dir / "repository"
    models = build_repository(repository, tiny, device)
    calibration = make_workload(work_dir / "calibration.fasta", min(frames, 2_000), 300, seed=2)
    balance_classifier(models, repository, calibration, device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus_visible": torch.cuda.device_count(),
        "models": "tiny" if tiny else "DNABERT-S 117M + ESM-2 3B (random weights), bf16",
        "frames_per_chunk_size": frames,
        "batch_chunks": batch_chunks,
        "in_flight": in_flight,
        "runs": {},
    }
    for size in map(int, chunk_sizes or repo.CHUNK_SIZES):
        fasta = work_dir / f"workload_{size}.fasta"
        workload = make_workload(fasta, frames, size)
        own, own_embeddings = virnucpro_own(models, workload[:virnucpro_frames], device)
        baseline, reference = in_process(models, workload, device)
        alone = models_alone(models, workload, device)
        probes = {repo.DNABERT_S: work_dir / "probe_dna.fasta", repo.ESM2: work_dir / "probe.faa"}
        write_frames(workload[: min(PROBE_FRAMES, virnucpro_frames)], *probes.values())
        out = work_dir / f"out_{size}"
        run_settings = ServedRun(
            repository, fasta, len(workload), size, out, batch_chunks, in_flight
        )
        # The default mode's repeated runs go to the measured run's server, which then serves
        # without the embedders' cache: a repeat would take every embedding from it.
        then = repeat_runs(run_settings, one_chunk_frames) if invariance else None
        set_embedding_cache(repository, 0 if invariance else repo.EMBEDDING_CACHE_BYTES)
        try:
            serve = served(run_settings, probes, then)
        finally:
            set_embedding_cache(repository, repo.EMBEDDING_CACHE_BYTES)
        serve["embedding_cache_bytes"] = 0 if invariance else repo.EMBEDDING_CACHE_BYTES
        repeats = serve.pop("then", None)
        own["served_embeddings"] = {
            entry: embedding_difference(own_embeddings[entry], found)
            for entry, found in serve.pop("embeddings").items()
        }
        served_verdicts = verdicts(run_settings.out / "run")
        serve["virus_share"] = sum(served_verdicts) / len(served_verdicts)
        # Batching, compilation and bf16 rounding alone move this many verdicts: the yardstick
        # for FP8's agreement below (a balanced random head sits close to every frame).
        serve["verdict_agreement_with_in_process"] = agreement(reference, served_verdicts)
        # Weight matmuls on real (unpadded) tokens; attention scores add < 1% at these lengths.
        flops = sum(
            2 * models["matmul_params"][k] * baseline["tokens"][k] for k in ("dna", "protein")
        )
        tflops = flops / serve["seconds"] / 1e12
        run = results["runs"][str(size)] = {
            "frames": len(workload),
            "virnucpro_own": own,
            "in_process": baseline,
            "served": serve,
            "served_over_virnucpro_own": serve["frames_per_s"] / own["frames_per_s"],
            "served_over_in_process": serve["frames_per_s"] / baseline["frames_per_s"],
            "models_alone": alone,
            "served_over_models_alone": serve["frames_per_s"] / alone["frames_per_s"],
            "served_tflops": tflops,
            "served_mfu_h100_bf16": tflops / H100_BF16_DENSE_TFLOPS if not tiny else None,
        }
        report.measured(size, run)
        if invariance:
            args = (models, workload, run_settings, repeats, device, one_chunk_frames)
            run["batch_invariance"] = batch_invariance(*args)
            invariant_served = run["batch_invariance"]["batch_invariant"]["served"]
            run["invariant_over_default"] = invariant_served["frames_per_s"] / serve["frames_per_s"]
            report.invariance(size, run)
        if gpu_scaling:
            one = served(dataclasses.replace(run_settings, gpus="0"))
            run["served_one_gpu"] = one
            run["all_gpus_over_one"] = serve["frames_per_s"] / one["frames_per_s"]
            report.one_gpu(size, run, results["gpus_visible"])
        if duplicate_fraction:
            cached = duplicate_runs(run_settings, work_dir, frames, duplicate_fraction)
            run["embedding_cache"] = cached
            report.cached(size, cached)
        if fp8:
            served_fp = served_fp8(models, run_settings, workload, served_verdicts, device)
            run["served_fp8"] = served_fp
            if served_fp["layers"]:  # else nothing passed: no FP8 run
                run["served_fp8_over_in_process"] = (
                    served_fp["frames_per_s"] / baseline["frames_per_s"]
                )
                report.fp8(size, run)
        json_out.write_text(json.dumps(results, indent=2) + "\n")  # kept if a later run fails
    click.echo(report.table(results))
    click.echo(f"written {json_out}")


if __name__ == "__main__":
    main()
