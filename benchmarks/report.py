"""What the bench prints: a line per measurement as it ends, and the table of the whole run."""

from __future__ import annotations

import click


def measured(size: int, run: dict) -> None:
    own, baseline, serve, alone = (
        run["virnucpro_own"],
        run["in_process"],
        run["served"],
        run["models_alone"],
    )
    click.echo(
        f"{size} bp: {run['frames']} frames | VirNucPro's own {own['frames_per_s']:.0f}/s | "
        f"in-process {baseline['frames_per_s']:.0f}/s | served {serve['frames_per_s']:.0f}/s | "
        f"ratio {run['served_over_in_process']:.2f} (over VirNucPro's own "
        f"{run['served_over_virnucpro_own']:.2f}) | models alone "
        f"{alone['frames_per_s']:.0f}/s (served {run['served_over_models_alone']:.0%} of it) | "
        f"GPU busy {serve['gpu_busy_pct']} % | cold start {serve['cold_start_s']:.0f} s"
    )


def one_gpu(size: int, run: dict, gpus: int) -> None:
    click.echo(
        f"{size} bp: served on 1 GPU {run['served_one_gpu']['frames_per_s']:.0f}/s | on "
        f"{gpus} GPUs {run['served']['frames_per_s']:.0f}/s | {run['all_gpus_over_one']:.2f}x"
    )


def cached(size: int, cached: dict) -> None:
    runs, fraction = cached["runs"], cached["duplicate_fraction"]
    click.echo(
        f"{size} bp reads/s, cache off/on: no copies "
        f"{runs['f=0, cache off']['reads_per_s']:.0f}/"
        f"{runs['f=0, cache on']['reads_per_s']:.0f} "
        f"({cached['no_duplicates_on_over_off']:.3f}x) | {fraction:g} copies "
        f"{cached['duplicates_on_over_off']:.2f}x | on over no copies "
        f"{cached['duplicates_on_over_no_duplicates_off']:.2f}x "
        f"(target {cached['target_over_no_duplicates']:.2f}x)"
    )


def fp8(size: int, run: dict) -> None:
    served_fp = run["served_fp8"]
    click.echo(
        f"{size} bp: served with FP8 on {served_fp['layers']} of {served_fp['of']} "
        f"linear layers {served_fp['frames_per_s']:.0f}/s | ratio "
        f"{run['served_fp8_over_in_process']:.2f} | verdicts agree on "
        f"{served_fp['verdict_agreement']:.2%} of frames | embedding cosine min "
        f"{served_fp['embedding_cosine']['min']:.5f}"
    )


def _moved(found: dict) -> str:
    return f"{found['moved']}/{found['rows']}"


def _first(first_difference: dict, entry: str) -> str:
    return first_difference[entry]["first_module"] or "none"


def _modes(run: dict) -> list[tuple[str, dict, dict]]:
    """(mode, its served measurement, its invariance findings) of both modes."""
    found = run["batch_invariance"]
    return [
        ("default", run["served"], found["default"]),
        ("batch-invariant", found["batch_invariant"]["served"], found["batch_invariant"]),
    ]


def invariance(size: int, run: dict) -> None:
    parts = []
    for mode, serve, found in _modes(run):
        first = found["first_difference"]
        parts.append(
            f"{mode} {serve['frames_per_s']:.0f}/s, rows moved between runs "
            f"{_moved(found['between_runs'])}, one chunk per request "
            f"{_moved(found['one_chunk_vs_batch_chunks'])}, first differing module: DNABERT-S "
            f"{_first(first, 'dnabert_s')}, ESM-2 {_first(first, 'esm2')}"
        )
    click.echo(f"{size} bp: " + " | ".join(parts) + f" | ratio {run['invariant_over_default']:.2f}")


def _invariance_table(results: dict) -> list[tuple[str, ...]]:
    chunks = results["batch_chunks"]
    head = (
        "chunk",
        "mode",
        "served",
        "/ default",
        "moved between runs",
        f"moved 1 vs {chunks} chunks",
        "first differing: DNABERT-S",
        "ESM-2",
    )
    rows = [head]
    for size, run in results["runs"].items():
        if "batch_invariance" not in run:
            continue
        for mode, serve, found in _modes(run):
            first = found["first_difference"]
            rows.append(
                (
                    f"{size} bp",
                    mode,
                    f"{serve['frames_per_s']:.0f}/s",
                    f"{serve['frames_per_s'] / run['served']['frames_per_s']:.2f}x",
                    _moved(found["between_runs"]),
                    _moved(found["one_chunk_vs_batch_chunks"]),
                    _first(first, "dnabert_s"),
                    _first(first, "esm2"),
                )
            )
    return rows if len(rows) > 1 else []


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]


def table(results: dict) -> str:
    """Frames/s of each way per chunk size and served's ratios over the two in-process ones;
    then, where measured, both modes' served frames/s and rows moved (invariance.py)."""
    head = ("chunk", "frames", "VirNucPro's own", "in-process", "served", "/ own", "/ in-process")
    rows = [head]
    for size, run in results["runs"].items():
        rows.append(
            (
                f"{size} bp",
                str(run["frames"]),
                f"{run['virnucpro_own']['frames_per_s']:.0f}/s",
                f"{run['in_process']['frames_per_s']:.0f}/s",
                f"{run['served']['frames_per_s']:.0f}/s",
                f"{run['served_over_virnucpro_own']:.2f}x",
                f"{run['served_over_in_process']:.2f}x",
            )
        )
    invariance = _invariance_table(results)
    return "\n".join(_aligned(rows) + ([""] + _aligned(invariance) if invariance else []))
