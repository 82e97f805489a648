"""The documentation holds together: every relative link lands on a file in the repository, and the front door
stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not t.startswith(("http://", "https://", "mailto:", "#"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands_on_a_file_in_the_repository(page):
    broken = [t for t in _relative_links(page) if not (page.parent / t.split("#", 1)[0]).resolve().exists()]
    outside = [t for t in _relative_links(page) if ROOT not in (page.parent / t).resolve().parents]
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"
    assert not outside, f"{page.relative_to(ROOT)}: links outside the repository: {outside}"


def test_every_docs_page_is_reachable_from_the_index():
    index = ROOT / "docs" / "README.md"
    listed = {(index.parent / t.split("#", 1)[0]).resolve() for t in _relative_links(index)}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md") if p != index}
    assert not pages - listed, (
        f"docs/README.md does not list: {sorted(str(p.relative_to(ROOT)) for p in pages - listed)}"
    )


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160, "README.md grew past a front door: move the detail into docs/"
    assert text.index("make run") < text.index("## A short tour"), "the two commands come first"
