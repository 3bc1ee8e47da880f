"""The field reference (docs/reference/*.md) is generated from the models and complete."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "docs" / "gen_reference.py"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load_generator()


def test_every_config_and_result_field_has_a_description(gen: ModuleType) -> None:
    missing = gen.missing_descriptions()
    assert not missing, (
        "fields without a pydantic description (add Field(..., description=...)):\n  "
        + "\n  ".join(missing)
    )


def test_committed_reference_pages_match_the_models(gen: ModuleType) -> None:
    stale = [
        name
        for name, text in gen.render().items()
        if not (gen.REFERENCE_DIR / name).is_file()
        or (gen.REFERENCE_DIR / name).read_text(encoding="utf-8") != text
    ]
    assert not stale, (
        f"stale reference pages {stale}: run `python docs/gen_reference.py` and commit the result"
    )


def test_reference_covers_every_config_section_and_result_sub_model(gen: ModuleType) -> None:
    documented = {m.__name__ for page in gen.pages() for m in gen.walk(page.roots)}
    for name in (
        "ExperimentConfig", "DecoderConfig", "WarmupConfig", "BaselineConfig", "PyTorchConfig",
        "VLLMConfig", "TensorRTConfig", "LoRAConfig", "SyntheticDatasetConfig", "OnlineConfig",
        "ServerConfig", "SLOConfig", "ExecutionConfig", "StudyConfig", "UserConfig",
        "SlurmSection", "ExperimentResult", "EnergyBreakdown", "DeviceEnergy",
        "BaselineMeasurement", "EnvironmentSnapshot", "StudyResult", "StudyStatistics",
        "StudyManifest", "RunEntry",
    ):  # fmt: skip
        assert name in documented, name


def test_a_field_without_a_description_is_reported(gen: ModuleType) -> None:
    class Inner(BaseModel):
        undocumented: int = 0

    class Outer(BaseModel):
        documented: int = Field(0, description="has one")
        inner: list[Inner] | None = Field(None, description="nested through list and None")

    assert gen.walk((Outer,)) == [Outer, Inner]
    page = gen.Page("x.md", "X", "intro", (Outer,))
    original = gen.pages
    gen.pages = lambda: [page]
    try:
        missing = gen.missing_descriptions()
        rendered = gen.render()["x.md"]
    finally:
        gen.pages = original
    assert missing == [f"{Inner.__module__}.{Inner.__qualname__.split('.')[-1]}.undocumented"]
    assert "| `documented` | int | `0` | has one |" in rendered
    assert (
        "| `inner` | list[[Inner](#inner)] \\| None | `None` | nested through list and None |"
        in (rendered)
    )
