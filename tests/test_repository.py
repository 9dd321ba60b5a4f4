"""The repository stands alone: what its files cite is inside it (docs/design.md §2.12).

No file may cite a design document kept outside the checkout, and every section a file
cites as ``docs/<page>.md §N`` (or, inside ``docs/``, ``<page>.md §N`` and a page's own
``§N``) must be a numbered heading of that page (``## 4. …``, ``### 4.2 …``).  Files are
those git knows: tracked, or new and not ignored; binary files are skipped.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Citations of what lived beside the checkout: its folder, the machine's work tree, and the
#: design notes, protocol readings and research kept there.  (Each pattern is written so
#: that this file does not match it.)
OUTSIDE = re.compile(
    r"\.\./shared"
    r"|/work(?=/)"
    r"|(?:DESIGN|ollama-api|ollama-anthropic|scheduling-research|anchors[\w-]*)\.md"
)

#: A page mention, or a section number with an optional range end (``§2.2–2.4``, ``§4–§6``).
_TOKEN = re.compile(
    r"(?:docs/)?(?P<page>[\w-]+)\.md\b"
    r"|§\s?(?P<first>\d+(?:\.\d+)*)(?:\s*[–-]\s*§?\s?(?P<last>\d+(?:\.\d+)*))?"
)
_HEADING = re.compile(r"#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")


@dataclass(frozen=True)
class Ref:
    """One cited section: ``page`` (a name under docs/) and ``section`` (``"4.2"``)."""

    where: str
    page: str
    section: str

    def __str__(self) -> str:
        return f"{self.where}: {self.page}.md §{self.section}"


def repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (or one deleted but not yet staged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def outside_citations(text: str, name: str = "") -> list[str]:
    return [
        f"{name}:{n}: {m.group(0)}"
        for n, line in enumerate(text.splitlines(), 1)
        for m in OUTSIDE.finditer(line)
    ]


def section_refs(text: str, name: str = "", own_page: str | None = None) -> list[Ref]:
    """Every section cited in ``text``: a number belongs to the last page named before it
    on its line, else (in a page of docs/) to the page itself; other bare numbers are not
    references this test can resolve."""
    refs = []
    for n, line in enumerate(text.splitlines(), 1):
        page = own_page
        for m in _TOKEN.finditer(line):
            if m.group("page") is not None:
                page = m.group("page")
            elif page is not None:
                for section in (m.group("first"), m.group("last")):
                    if section is not None:
                        refs.append(Ref(f"{name}:{n}", page, section))
    return refs


@cache
def sections(page: str) -> frozenset[str] | None:
    """The numbered headings of docs/<page>.md, or None when there is no such page."""
    path = DOCS / f"{page}.md"
    if not path.is_file():
        return None
    found = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            found.append(m.group(1))
    return frozenset(found)


def unresolved(refs: list[Ref]) -> list[str]:
    out = []
    for ref in refs:
        known = sections(ref.page)
        if known is None:
            out.append(f"{ref} (no page docs/{ref.page}.md)")
        elif ref.section not in known:
            out.append(f"{ref} (no such section)")
    return out


def corpus() -> list[tuple[str, str, str | None]]:
    """(name, text, own page) for every text file of the repository."""
    out = []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT)
        own = rel.stem if rel.parent == Path("docs") and rel.suffix == ".md" else None
        out.append((rel.as_posix(), text, own))
    return out


def test_no_file_cites_a_document_outside_the_repository() -> None:
    files = corpus()
    names = {name for name, _, _ in files}
    assert {"README.md", "pyproject.toml", "docs/ollama.md", "tests/test_repository.py"} <= names
    found = [hit for name, text, _ in files for hit in outside_citations(text, name)]
    assert found == [], "cites a document outside the repository:\n" + "\n".join(found)


def test_every_cited_section_exists() -> None:
    refs = [ref for name, text, own in corpus() for ref in section_refs(text, name, own)]
    # The code cites each page of the design somewhere, so the check has something to bite.
    cited = {ref.page for ref in refs if not ref.where.startswith("docs/")}
    assert {"ollama", "anthropic", "design", "architecture", "benchmarks"} <= cited
    missing = unresolved(refs)
    assert missing == [], "cites a section that does not exist:\n" + "\n".join(missing)


def test_every_page_numbers_its_sections_once() -> None:
    for path in sorted(DOCS.glob("*.md")):
        numbers: list[str] = []
        fenced = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                fenced = not fenced
            elif not fenced and (m := _HEADING.match(line)):
                numbers.append(m.group(1))
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        assert repeated == [], f"{path.name}: sections numbered twice: {repeated}"


# The checks themselves, on made-up text: the strings are built in pieces so that this
# file cites nothing it would refuse.
@pytest.mark.parametrize(
    ("text", "hits"),
    [
        pytest.param("see shared/" + "ollama-api" + ".md §4.2", 1, id="the protocol reading"),
        pytest.param("(" + "DESIGN" + ".md §4.10)", 1, id="the design notes"),
        pytest.param("../" + "shared/anchors-2026" + ".md", 2, id="the folder and a research doc"),
        pytest.param("cat " + "/work" + "/shared/x", 1, id="the machine's work tree"),
        pytest.param("ollama-" + "anthropic" + ".md §5.2", 1, id="the Anthropic reading"),
        pytest.param("docs/design.md §2.10 and docs/anthropic.md §6.2", 0, id="our own docs"),
        pytest.param("tests/shared/test_replicas.py", 0, id="a folder named shared"),
    ],
)
def test_outside_citations_are_recognised(text: str, hits: int) -> None:
    assert len(outside_citations(text)) == hits


@pytest.mark.parametrize(
    ("text", "own", "expected"),
    [
        pytest.param(
            "(docs/ollama.md §2.2–2.4, §4)",
            None,
            [("ollama", "2.2"), ("ollama", "2.4"), ("ollama", "4")],
            id="a range and a list",
        ),
        pytest.param(
            "(ollama.md §4–§6): slots",
            None,
            [("ollama", "4"), ("ollama", "6")],
            id="a range of whole sections",
        ),
        pytest.param(
            "docs/ollama.md §7.3, docs/anthropic.md §7.",
            None,
            [("ollama", "7.3"), ("anthropic", "7")],
            id="two pages on one line",
        ),
        pytest.param(
            "the queue (§1) and §2",
            "queueing",
            [("queueing", "1"), ("queueing", "2")],
            id="a page's own sections",
        ),
        pytest.param("the queue (§1)", None, [], id="a bare number outside docs"),
        pytest.param("`docs/<page>.md §N`", None, [], id="a placeholder"),
    ],
)
def test_section_references_are_read(
    text: str, own: str | None, expected: list[tuple[str, str]]
) -> None:
    assert [(r.page, r.section) for r in section_refs(text, own_page=own)] == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("docs/ollama.md §" + "99", "no such section", id="a missing section"),
        pytest.param("docs/" + "nowhere.md §" + "1", "no page", id="a missing page"),
    ],
)
def test_unresolved_references_are_reported(text: str, problem: str) -> None:
    (only,) = unresolved(section_refs(text, "made-up"))
    assert problem in only
