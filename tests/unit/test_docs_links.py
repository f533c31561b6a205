"""The README and docs/ point only at what exists: relative links reach a file (and a heading, for
an #anchor), and the repository paths they quote in backticks are there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# `tests/test_x.py::test_y`, `docs/measurements/`, `virnucpro_triton/door/limits.py`, ...
QUOTED_PATH = re.compile(
    r"`((?:tests|virnucpro_triton|docs|docker|workflow|slurm|config|examples|benchmarks)/[\w./-]*)"
    r"(?:::[^`]*)?`"
)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in markdown.read_text().splitlines():
        fenced ^= line.startswith("```")
        heading = re.match(r"#+\s+(.*)", line)
        if heading and not fenced:
            base, n = slug(heading.group(1)), 0
            while (name := base if n == 0 else f"{base}-{n}") in found:
                n += 1
            found.add(name)
    return found


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        destination = (doc.parent / path) if path else doc
        if not destination.exists():
            broken.append(target)
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(target)
    return broken


def missing_paths(doc: Path, root: Path = ROOT) -> list[str]:
    return [p for p in QUOTED_PATH.findall(doc.read_text()) if not (root / p).exists()]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(doc):
    assert broken_links(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_repository_paths_exist(doc):
    assert missing_paths(doc) == []


def test_a_broken_link_and_a_missing_path_are_found(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").touch()
    (tmp_path / "b.md").write_text("## Serve and classify\n")
    doc = tmp_path / "a.md"
    doc.write_text(
        "# Real use\n\n```sh\n# not a heading\n```\n"
        "[ok](#real-use) [ok](b.md#serve-and-classify) [ok](https://example.org/x#y)\n"
        "[bad](#not-a-heading) [bad](b.md#real-use) [bad](gone.md)\n"
        "`tests/test_x.py::test_y` `tests/test_gone.py` `docs/measurements/`\n"
    )
    assert broken_links(doc) == ["#not-a-heading", "b.md#real-use", "gone.md"]
    assert missing_paths(doc, tmp_path) == ["tests/test_gone.py", "docs/measurements/"]
