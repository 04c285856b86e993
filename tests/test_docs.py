"""The repository explains itself: its markdown and Python files link only to files it holds,
no path climbs out of it, every "docs/<file>.md §N" citation names a section that exists, and
nothing cites the team's design brief that lives outside it (docs/ is the project's account).
Pure file reading: no imports of the package, no subprocesses."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = {"recall_bench_out", "runs"}  # ignored run outputs at the top level
SKIP_DIRS = {"__pycache__", "build"}
BRIEF = "DESIGN" + ".md"  # written in two parts so that this file does not cite it
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
CLIMB = re.compile(r"(?<![\w./-])((?:\.\./)+[\w./-]*)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
BRIEF_CITE = re.compile(r"[\w./-]*" + re.escape(BRIEF))
SECTION_CITE = re.compile(r"(docs/[\w/-]+\.md) §(\d+)")


def repo_files() -> list[Path]:
    """Markdown and Python files of the repository (hidden folders, caches, build and run
    outputs left out; results' JSON is never read: only .md and .py are)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not (here == ROOT and d in OUTPUTS)
        )
        found += [here / f for f in sorted(files) if f.endswith((".md", ".py"))]
    return found


FILES = repo_files()


def inside(path: Path) -> bool:
    return Path(os.path.normpath(path)).is_relative_to(ROOT)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def link_targets(text: str) -> list[str]:
    """Targets of inline and reference-style markdown links that point at local files."""
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not SCHEME.match(t) and not t.startswith("#")]


def test_the_scan_sees_the_docs_and_the_code():
    names = {rel(p) for p in FILES}
    expected = {"README.md", "docs/README.md", "docs/design.md", "recall_bench/metrics.py"}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".md"], ids=rel)
def test_markdown_links_resolve_inside_the_repository(path: Path):
    bad = []
    for target in link_targets(path.read_text(encoding="utf-8")):
        file_part = target.split("#", 1)[0]
        resolved = path.parent / file_part
        if target.startswith("/") or not inside(resolved):
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (no such file)")
    assert not bad, f"{rel(path)}: broken links: {bad}"


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_no_path_climbs_out_of_the_repository(path: Path):
    climbs = CLIMB.findall(path.read_text(encoding="utf-8"))
    outside = [c for c in climbs if not inside(path.parent / c)]
    assert not outside, f"{rel(path)}: paths outside the repository: {outside}"


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_no_citation_of_the_external_design_brief(path: Path):
    """A mention of that file name is allowed only where it names a copy the repository
    holds (results/degradation_text keeps one as the input text of its run)."""
    cited = BRIEF_CITE.findall(path.read_text(encoding="utf-8"))
    missing = [c for c in cited if not ((ROOT / c).is_file() or (path.parent / c).is_file())]
    assert not missing, f"{rel(path)} cites {missing}: cite docs/design.md §N instead"


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_section_citations_name_existing_sections(path: Path):
    bad = []
    for doc, number in SECTION_CITE.findall(path.read_text(encoding="utf-8")):
        target = ROOT / doc
        headings = target.read_text(encoding="utf-8") if target.is_file() else ""
        if not re.search(rf"^#+ §{number}\b", headings, re.MULTILINE):
            bad.append(f"{doc} §{number}")
    assert not bad, f"{rel(path)} cites sections that do not exist: {bad}"


def test_the_checks_catch_what_they_should():
    """The patterns themselves: a climbing link, a citation of the brief, a section."""
    assert link_targets("[a](../x.md) [b](https://e.org) [c](#top) ![d](p.png)") == [
        "../x.md",
        "p.png",
    ]
    two_up = "../" * 2  # spelled out, the path would climb out of this file's own folder
    assert link_targets(f"[r]: {two_up}shared/notes.md\n") == [f"{two_up}shared/notes.md"]
    assert CLIMB.findall("see ../shared/x and a/../b") == ["../shared/x"]
    assert not inside(ROOT / "../shared/x") and inside(ROOT / "docs/../README.md")
    assert BRIEF_CITE.findall(f"the {BRIEF} and ../shared/{BRIEF}") == [BRIEF, f"../shared/{BRIEF}"]
    mark = "§"  # kept apart from the names so that this file cites no section itself
    assert SECTION_CITE.findall(f"docs/design.md {mark}3 and docs/x.md {mark}12") == [
        ("docs/design.md", "3"),
        ("docs/x.md", "12"),
    ]
