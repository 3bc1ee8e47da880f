"""How llem tells a user to install one of its optional parts: always from the checkout.

The name ``llenergymeasure`` on the public package index belongs to another project, so no hint
may say ``pip install`` of that name with an extra: llem's extras install from its own checkout
(``pip install -e "<checkout>[extra]"``). From an editable install the hint names that checkout's
folder (``.`` when it is the working directory); otherwise it says where to run it.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["checkout_root", "extra_install_hint"]


@functools.lru_cache(maxsize=1)
def checkout_root() -> Path | None:
    """The checkout this package runs from (an editable install), or None (a built wheel)."""
    root = Path(__file__).resolve().parent.parent.parent  # <root>/src/llenergymeasure/
    try:
        head = (root / "pyproject.toml").read_text(encoding="utf-8")[:4096]
    except OSError:
        return None
    return root if 'name = "llenergymeasure"' in head else None


def extra_install_hint(extra: str) -> str:
    """``pip install -e "<checkout>[extra]"``: the command that installs ``extra``."""
    root = checkout_root()
    if root is None:
        return f'pip install -e "<your llenergymeasure checkout>[{extra}]"'
    try:
        here = Path.cwd().resolve() == root
    except OSError:
        here = False
    return f'pip install -e "{"." if here else root}[{extra}]"'
