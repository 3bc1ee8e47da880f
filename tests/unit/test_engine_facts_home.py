"""Every engine fact lives in one home: the catalogue, the engine's module and its config section.

Outside ``engines/`` and ``config/catalogue.py`` no module names an engine: no string equal to
an engine or config-section name, and no ``"<section>.<field>"`` key. A dummy engine registered
at run time (CPU, no torch, a tiny fake OpenAI server of its own) then works everywhere the
built-in ones do: ``llem run`` offline, a two-run study (in spawned processes), online mode
with a server llem starts, and ``llem report`` on what they wrote.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import llenergymeasure
from llenergymeasure.cli.app import app
from llenergymeasure.config.catalogue import ENGINES, EngineSpec, register_engine
from llenergymeasure.config.models import ENGINE_SECTION_MODELS, ExperimentConfig
from llenergymeasure.engines.base import ServeCommand
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.testing.engines import FakeEngine

PACKAGE_ROOT = Path(llenergymeasure.__file__).parent
FAKE_SERVER = Path(__file__).with_name("fake_openai_server.py")

#: Where engine names may appear: the engines and the catalogue.
HOMES = ("engines/", "config/catalogue.py")

#: (module, literal) pairs outside the homes, each with why it stays. An entry that no longer
#: occurs fails the test, so this list only shrinks.
ALLOWED: dict[tuple[str, str], str] = {
    ("testing/configs.py", "pytorch"): "test data: the backend of the example configs",
    ("logs.py", "vllm"): (
        "floor 0, below the catalogue: the name of vLLM's logger among the third-party "
        "loggers the CLI quiets (logs.py also sets vLLM's logging variables)"
    ),
}


def _names() -> set[str]:
    names = set(ENGINES)
    names |= {s.config_section for s in ENGINES.values() if s.config_section}
    return names | set(ENGINE_SECTION_MODELS)


def engine_literals() -> dict[tuple[str, str], list[int]]:
    """(module, literal) -> lines of every string constant outside the homes that is an engine
    or section name, or a dotted ``section.field`` key."""
    names = _names()
    dotted = re.compile(rf"(?:{'|'.join(map(re.escape, sorted(names)))})\.[A-Za-z_]\w*")
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        rel = path.relative_to(PACKAGE_ROOT).as_posix()
        if rel.startswith(HOMES):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if node.value in names or dotted.fullmatch(node.value):
                found.setdefault((rel, node.value), []).append(node.lineno)
    return found


def test_no_module_outside_the_engines_and_the_catalogue_names_an_engine():
    found = engine_literals()
    unexpected = [
        f"  {rel}:{lines[0]}: {literal!r}"
        for (rel, literal), lines in sorted(found.items())
        if (rel, literal) not in ALLOWED
    ]
    assert not unexpected, (
        "engine names outside engines/ and config/catalogue.py (put the fact in the engine's "
        "EngineSpec, its module or its config section):\n" + "\n".join(unexpected)
    )
    gone = sorted(set(ALLOWED) - set(found))
    assert not gone, f"allowed literals that no longer occur (remove them from ALLOWED): {gone}"


def test_the_scan_finds_an_engine_name_it_is_shown(tmp_path, monkeypatch):
    """The scan is not blind: a module comparing a backend with a name is found."""
    fake_root = tmp_path / "pkg"
    (fake_root / "harness").mkdir(parents=True)
    (fake_root / "harness" / "x.py").write_text(
        'def f(config):\n    return config.backend == "vllm" or {"pytorch.batch_size": 1}\n'
    )
    (fake_root / "engines").mkdir()
    (fake_root / "engines" / "y.py").write_text('NAME = "vllm"\n')
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_ROOT", fake_root)
    assert set(engine_literals()) == {
        ("harness/x.py", "vllm"),
        ("harness/x.py", "pytorch.batch_size"),
    }


def test_every_catalogue_section_is_a_config_section_model():
    for spec in ENGINES.values():
        assert spec.config_section in ENGINE_SECTION_MODELS, spec.name


# --- a registered dummy engine works everywhere --------------------------------------------


class DummyEngine(FakeEngine):
    """The dummy engine: the fake engine's offline hooks, and a server of its own (the fake
    OpenAI server script, started by the Python running the tests)."""

    name = "dummy"

    def serve_command(
        self, config: ExperimentConfig, *, model: str, host: str, port: int
    ) -> ServeCommand:
        argv = [sys.executable, str(FAKE_SERVER), "--host", host, "--port", str(port)]
        return ServeCommand(argv=argv, notes=[f"dummy server for {model}"])


DUMMY = EngineSpec(
    name="dummy",
    engine_class=f"{__name__}:DummyEngine",
    import_module="json",  # always importable: installed
    distribution="llem-dummy-engine-not-a-distribution",
    extra="dummy",
    precisions=("fp32",),
    decoding_strategies=("greedy",),
    config_section=None,
    server_program=sys.executable,
)

runner = CliRunner()


@pytest.fixture
def dummy_engine(reachable_hub: None) -> Iterator[EngineSpec]:
    with register_engine(DUMMY) as spec:
        yield spec


def quick_yaml(tmp_path: Path, extra: str = "", *, dataset: str = "") -> Path:
    """A dummy-engine experiment that measures at once (no warmup wait, short baseline), on 4
    synthetic prompts unless ``dataset`` is given."""
    path = tmp_path / "dummy.yaml"
    path.write_text(
        "model: org/dummy-model\nbackend: dummy\nprecision: fp32\n"
        + (dataset or "dataset: {n: 4, input_len: 8, output_len: 4}\n")
        + "warmup: {n_warmup: 1, thermal_floor_seconds: 0}\n"
        "baseline: {duration_seconds: 0.2}\n" + extra
    )
    return path


def prompts_dataset(tmp_path: Path, n: int = 4) -> str:
    """A JSONL dataset of ``n`` prompts (online mode sends text: no tokenizer of the model)."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return f"dataset: {path}\nn: {n}\nmax_new_tokens: 4\n"


def result_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("result.json"))


def report(directory: Path) -> Any:
    out = runner.invoke(app, ["report", str(directory), "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def test_a_registered_engine_runs_offline_and_is_reported(dummy_engine, tmp_path):
    out = tmp_path / "results"
    run = runner.invoke(app, ["run", str(quick_yaml(tmp_path)), "-o", str(out)])
    assert run.exit_code == 0, run.output
    (directory,) = result_dirs(out)
    result = ExperimentResult.from_json(directory / "result.json")
    assert result.config.backend == "dummy" and result.n_requests == 4
    assert result.output_tokens > 0
    assert report(directory)


def test_a_registered_engine_runs_in_a_two_run_study_and_is_reported(dummy_engine, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: dummy-study\nmodel: org/dummy-model\nbackend: dummy\nprecision: fp32\n"
        "warmup: {n_warmup: 1, thermal_floor_seconds: 0}\nbaseline: {duration_seconds: 0.2}\n"
        "sweep:\n  dataset.output_len: [2, 4]\ndataset: {n: 3, input_len: 8}\n"
        "execution: {n_cycles: 1, config_gap_seconds: 0, cycle_gap_seconds: 0}\n"
    )
    out = tmp_path / "results"
    run = runner.invoke(app, ["run", str(study), "-o", str(out)])
    assert run.exit_code == 0, run.output
    dirs = result_dirs(out)
    assert len(dirs) == 2  # measured in spawned processes that registered the engine too
    assert {ExperimentResult.from_json(d / "result.json").config.backend for d in dirs} == {"dummy"}
    (study_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert report(study_dir)


def test_a_registered_engine_runs_online_on_the_server_it_names(dummy_engine, tmp_path):
    online = "mode: online\nonline: {request_rate: inf, n_warmup_requests: 0}\n"
    out = tmp_path / "results"
    config = quick_yaml(tmp_path, online, dataset=prompts_dataset(tmp_path))
    run = runner.invoke(app, ["run", str(config), "-o", str(out)])
    assert run.exit_code == 0, run.output
    (directory,) = result_dirs(out)
    result = ExperimentResult.from_json(directory / "result.json")
    assert result.online is not None and result.online.metrics.n_ok == 4
    command = result.online.server_command
    assert command is not None and command[:2] == [sys.executable, str(FAKE_SERVER)]
    assert (directory / "server.log").is_file()
    assert report(directory)


def test_a_registered_engine_without_a_server_fails_online_pre_flight(reachable_hub, tmp_path):
    no_server = dataclasses.replace(DUMMY, server_program=None)
    online = "mode: online\nonline: {n_warmup_requests: 0}\n"
    config = quick_yaml(tmp_path, online, dataset=prompts_dataset(tmp_path))
    with register_engine(no_server):
        run = runner.invoke(app, ["run", str(config), "-o", str(tmp_path / "results")])
    assert run.exit_code == 2, run.output
    assert "the dummy engine has no server of its own that llem can start" in run.output
    assert "KeyError" not in run.output


def test_batch_size_on_an_engine_without_a_concurrency_field_is_an_error(dummy_engine, tmp_path):
    run = runner.invoke(app, ["run", str(quick_yaml(tmp_path)), "--batch-size", "4", "--dry-run"])
    assert run.exit_code == 2
    assert "engine 'dummy' has none" in run.output


def test_batch_size_sets_a_registered_engines_concurrency_field(reachable_hub, tmp_path):
    """A registered engine with a config section and a concurrency field gets --batch-size
    there (here the dummy borrows vLLM's section, as a plugin could not add its own)."""
    with_field = dataclasses.replace(DUMMY, config_section="vllm", concurrency_field="max_num_seqs")
    with register_engine(with_field):
        run = runner.invoke(
            app, ["run", str(quick_yaml(tmp_path)), "--batch-size", "3", "--dry-run", "--json"]
        )
    assert run.exit_code == 0, run.output
    (experiment,) = json.loads(run.stdout)["experiments"]
    assert experiment["vllm"]["max_num_seqs"] == 3
