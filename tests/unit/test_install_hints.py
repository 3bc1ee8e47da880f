"""Install hints name the checkout's extras, never the public index's unrelated package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import llenergymeasure
from llenergymeasure import install
from llenergymeasure.install import checkout_root, extra_install_hint

ROOT = Path(llenergymeasure.__file__).resolve().parents[2]
# `pip install llenergymeasure[...]` or `pip install "llenergymeasure[...]"`: the index's package
FROM_THE_INDEX = re.compile(r"""pip install\s+(-U\s+)?["']?llenergymeasure\[""")


def test_an_editable_install_names_its_checkout(monkeypatch: pytest.MonkeyPatch):
    assert checkout_root() == ROOT
    monkeypatch.chdir(ROOT)
    assert extra_install_hint("zeus") == 'pip install -e ".[zeus]"'


def test_away_from_the_checkout_the_hint_gives_its_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert extra_install_hint("vllm") == f'pip install -e "{ROOT}[vllm]"'


def test_without_a_checkout_the_hint_says_where_to_run_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(install, "checkout_root", lambda: None)
    assert extra_install_hint("report") == (
        'pip install -e "<your llenergymeasure checkout>[report]"'
    )


def test_no_hint_or_page_installs_llenergymeasure_from_the_index():
    places = [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("docs").rglob("*.md")]
    places += [ROOT / "README.md", *ROOT.joinpath("examples").rglob("*")]
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in places
        if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".yml", ".txt"}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if FROM_THE_INDEX.search(line) and "belongs to another project" not in line
    ]
    assert found == []
