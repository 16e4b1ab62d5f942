"""The guides in docs/ are the source of each lab's text: the README links to them, every link into docs/ and
notebooks/ resolves (anchors included), and every tab of the dashboard has a guide that names it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDES = ["optimizers", "pruning", "normalization", "landscapes", "curvature", "spectra", "experiments", "dashboard"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # local targets, not http(s):


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)}


def broken(source: Path) -> list[str]:
    """The links of a Markdown file whose file (or heading) does not exist."""
    bad = []
    for target in links(source):
        file, _, anchor = target.partition("#")
        dest = (source.parent / file).resolve() if file else source
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    return bad


def test_readme_links_every_guide_and_notebook():
    targets = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    missing = [f"docs/{g}.md" for g in GUIDES if f"docs/{g}.md" not in targets]
    missing += [f"notebooks/{nb.name}" for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))
                if f"notebooks/{nb.name}" not in targets]
    assert not missing, f"the README links to neither of: {missing}"


@pytest.mark.parametrize("source", ["README.md", *(f"docs/{g}.md" for g in GUIDES), "docs/architecture.md"])
def test_links_resolve(source):
    assert not broken(ROOT / source), f"{source} has broken links: {broken(ROOT / source)}"


def test_every_dashboard_tab_has_a_guide_naming_it():
    from trainlab.widgets.labs import LABS

    text = {g: (DOCS / f"{g}.md").read_text() for g in GUIDES}
    tabs = ["Training", *(lab.title for lab in LABS)]
    unnamed = [t for t in tabs if not any(f"**{t}**" in body for body in text.values())]
    assert not unnamed, f"no guide names these dashboard tabs (in bold, as **Tab**): {unnamed}"


def test_every_guide_says_how_to_read_its_plots():
    for g in GUIDES:
        assert re.search(r"^## Reading the plots", (DOCS / f"{g}.md").read_text(), flags=re.M), g


def test_broken_links_are_caught(tmp_path):
    """The checker itself: a missing file and a missing heading are both reported."""
    (tmp_path / "a.md").write_text("# A title\n[ok](#a-title) [gone](b.md) [no heading](a.md#nowhere) "
                                   "[web](https://example.org/x.md)\n```\n[in code](c.md)\n```\n")
    found = broken(tmp_path / "a.md")
    assert len(found) == 2 and found[0].startswith("b.md") and "nowhere" in found[1]


NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_teach_in_order(path):
    """A notebook of the sequence opens with what it teaches, and every section that runs code says what to try
    and what to look for before its first code cell (the cells as written, not executed)."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and "What this notebook teaches" in cells[0].source, path.name
    section, told, missing = None, False, []
    for cell in cells[1:]:
        if cell.cell_type == "markdown":
            heading = re.match(r"#{2,3} (.+)", cell.source)
            if heading:
                section, told = heading.group(1), False
            told |= "**Try:**" in cell.source and "**Look for:**" in cell.source
        elif section is not None:
            if not told:
                missing.append(section)
            section = None  # only the first code cell of a section needs the cell before it
    assert not missing, f"{path.name}: sections without a Try:/Look for: cell before their code: {missing}"
