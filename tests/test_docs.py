"""The code cites only what the repository contains: every `docs/*.md` it names exists, and no docstring points
at files outside the checkout (the steering material a clone does not have)."""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "pixelhdm_jax").rglob("*.py"), *(REPO / "configs").glob("*.py"),
                  *(REPO / "launch").glob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "tests").rglob("*.md"),
                  REPO / "README.md", *(REPO / "docs").glob("*.md")])
SOURCES = [path for path in SOURCES if path != pathlib.Path(__file__).resolve()]
OUTSIDE = re.compile(r"reference/\w+\.md|field\.md|SPEC §|\bseed (?:design|document)|the seed's|shared/fixtures")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_citations_stay_inside_the_repository(path):
  text = path.read_text(encoding="utf-8")
  assert not OUTSIDE.findall(text), f"{path.relative_to(REPO)} cites files a clone does not have"
  for name in re.findall(r"docs/([\w-]+\.md)", text):
    assert (REPO / "docs" / name).is_file(), f"{path.relative_to(REPO)} cites docs/{name}, which does not exist"
