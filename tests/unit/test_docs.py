"""Every ```python block in the README and docs runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)

examples = [
    pytest.param(code, id=f"{path.name}:{n}")
    for path in DOCS
    for n, code in enumerate(BLOCK.findall(path.read_text(encoding="utf-8")), 1)
]


def test_there_are_examples() -> None:
    assert len(examples) >= 3


@pytest.mark.parametrize("code", examples)
def test_example_runs(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


def test_profile_reference_is_current() -> None:
    from infrakit.settings.reference import render_reference

    committed = (ROOT / "docs" / "profile-reference.md").read_text(encoding="utf-8")
    assert committed == render_reference(), (
        "docs/profile-reference.md is stale: run "
        "`infrakit config reference > docs/profile-reference.md`"
    )


def test_profile_reference_covers_every_key() -> None:
    from infrakit.settings import InfraSettings
    from infrakit.settings.models import flatten

    text = (ROOT / "docs" / "profile-reference.md").read_text(encoding="utf-8")
    for key in flatten(InfraSettings().masked()):
        assert f"`{key}`" in text, key
