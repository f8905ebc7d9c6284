"""References in the repository lead somewhere a reader of the repository can open.

Code, tests, benchmarks and docs cite the behaviour contract as `BEHAVIOUR §n` (or §n.m, an
item of section n) in docs/BEHAVIOUR.md, and measured figures by the docs/PERFORMANCE.md
heading that holds them, in quotes; README and docs link each other with relative links. Each of those
must name something that exists, and nothing may cite the planning documents kept outside
the repository. Plain file reads, no subprocess: well under a second.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BEHAVIOUR = DOCS / "BEHAVIOUR.md"
# Where references are written: the packages, their tests, the benchmarks, the docs.
SOURCES = ("overnight_pipeline", "dashboard_api", "bench", "overnight_pipeline_tests", "docs")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}
# Assembled here so that this file does not cite what it forbids.
OUTSIDE = ("SPEC" + " §", "AC-" + "8.", "shared/" + "SPEC", "DAGSTER" + "_NOTES")

_SECTION = r"§\d+(?:\.\d+)?(?:[-–]\d+)?"
CITATION = re.compile(rf"BEHAVIOUR ({_SECTION}(?:(?:, |/| and | to ){_SECTION})*)")
SECTION_REF = re.compile(r"§(\d+)(?:\.(\d+))?(?:[-–](\d+))?")
HEADING_REF = re.compile(r"\b([A-Z]+)\.md,? \"([^\"]+)\"")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A line break inside a comment or a docstring, with what starts the next line.
_WRAP = re.compile(r"\n[ \t]*(?:#+[ \t]*)?")


def _files() -> Iterator[Path]:
    yield ROOT / "README.md"
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in SUFFIXES and "__pycache__" not in path.parts and path.is_file():
                yield path


@cache
def _texts() -> dict[Path, str]:
    """Every source file's text with wrapped lines joined, so a reference split over two
    lines of a comment or docstring reads as one."""
    return {path: _WRAP.sub(" ", path.read_text(encoding="utf-8")) for path in _files()}


def _outside_code_fences(text: str) -> Iterator[str]:
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def _headings(path: Path) -> tuple[str, ...]:
    return tuple(
        m.group(1).strip()
        for line in _outside_code_fences(path.read_text(encoding="utf-8"))
        if (m := re.match(r"#{1,6} (.+)", line))
    )


@cache
def _anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _headings(path):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(anchors)


@cache
def _behaviour() -> dict[int, frozenset[int]]:
    """Section number → the numbers of its numbered items, from docs/BEHAVIOUR.md."""
    sections: dict[int, set[int]] = {}
    current: set[int] | None = None
    for line in _outside_code_fences(BEHAVIOUR.read_text(encoding="utf-8")):
        if m := re.match(r"## (\d+)\. ", line):
            current = sections.setdefault(int(m.group(1)), set())
        elif line.startswith("## "):
            current = None
        elif current is not None and (m := re.match(r"(\d+)\. ", line)):
            current.add(int(m.group(1)))
    return {n: frozenset(items) for n, items in sections.items()}


def _unknown_sections(refs: str) -> list[str]:
    """The references among `refs` (e.g. '§4, §9', '§3.6', '§2-3') that BEHAVIOUR lacks."""
    sections = _behaviour()
    bad = []
    for m in SECTION_REF.finditer(refs):
        section, item, last = (int(g) if g else None for g in m.groups())
        assert section is not None
        if section not in sections or (last is not None and last not in sections):
            bad.append(m.group(0))
        elif item is not None and item not in sections[section]:
            bad.append(m.group(0))
    return bad


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_nothing_cites_a_document_outside_the_repository() -> None:
    found = [
        f"{_where(path)}: {needle!r}"
        for path, text in _texts().items()
        for needle in OUTSIDE
        if needle in text
    ]
    assert found == []


def test_behaviour_has_its_ten_sections_and_the_seven_steps_of_a_recommendation() -> None:
    sections = _behaviour()
    assert sorted(sections) == list(range(1, 11))
    assert sections[3] == frozenset(range(1, 8))


def test_every_behaviour_citation_names_a_section_that_exists() -> None:
    citations = [
        (path, m.group(1)) for path, text in _texts().items() for m in CITATION.finditer(text)
    ]
    # The code cites the contract in many places; finding none would mean the pattern broke.
    assert len(citations) > 100
    bad = [f"{_where(p)}: BEHAVIOUR {refs}" for p, refs in citations if _unknown_sections(refs)]
    assert bad == []


def test_behaviours_own_section_references_exist() -> None:
    text = "\n".join(_outside_code_fences(BEHAVIOUR.read_text(encoding="utf-8")))
    refs = SECTION_REF.findall(text)
    assert refs
    assert _unknown_sections(text) == []


@pytest.mark.parametrize(
    ("refs", "unknown"),
    [
        ("§4, §9", []),
        ("§3.6", []),
        ("§2-3", []),
        ("§11", ["§11"]),
        ("§3.8", ["§3.8"]),
        ("§9-12", ["§9-12"]),
        ("§1/§0", ["§0"]),
    ],
)
def test_the_section_check_refuses_what_behaviour_lacks(refs: str, unknown: list[str]) -> None:
    assert _unknown_sections(refs) == unknown


def test_every_docs_section_named_in_quotes_is_a_heading_of_that_doc() -> None:
    refs = [
        (path, m.group(1), m.group(2))
        for path, text in _texts().items()
        for m in HEADING_REF.finditer(text)
    ]
    assert len(refs) > 20
    bad = [
        f'{_where(path)}: {doc}.md, "{name}"'
        for path, doc, name in refs
        if not (DOCS / f"{doc}.md").is_file()
        or not any(h.startswith(name) for h in _headings(DOCS / f"{doc}.md"))
    ]
    assert bad == []


def test_every_markdown_link_of_the_readme_and_docs_reaches_a_file_and_its_heading() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    links = [
        (page, m.group(1))
        for page in pages
        for line in _outside_code_fences(page.read_text(encoding="utf-8"))
        for m in LINK.finditer(line)
        if not m.group(1).startswith(("http://", "https://", "mailto:"))
    ]
    assert len(links) > 20
    bad = []
    for page, target in links:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_file():
            bad.append(f"{_where(page)}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            bad.append(f"{_where(page)}: {target} (no such heading)")
    assert bad == []
