"""``dataset: {hf: NAME_OR_PATH, split, column, config}``: prompts from the ``datasets`` library.

The machines cannot reach the Hub, so the datasets here are folders written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; a hub name is only used where the hub
must be unreachable (a closed local port as ``HF_ENDPOINT``) or switched off.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.loading import validate_experiment_dict
from llenergymeasure.config.models import ExperimentConfig, HFDatasetConfig
from llenergymeasure.datasets.loader import describe_dataset, prepare_dataset
from llenergymeasure.exceptions import ConfigError, PreFlightError
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.testing.energy import FakeEnergyBackend
from llenergymeasure.testing.engines import FakeEngine

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

runner = CliRunner()


def save_dataset(folder: Path, **columns: list[Any]) -> Path:
    datasets.Dataset.from_dict(columns).save_to_disk(str(folder))
    return folder


def save_splits(folder: Path, splits: dict[str, dict[str, list[Any]]]) -> Path:
    datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(columns) for name, columns in splits.items()}
    ).save_to_disk(str(folder))
    return folder


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    return save_splits(
        tmp_path / "prompts",
        {
            "train": {"text": [f"train prompt {i}" for i in range(6)], "id": list(range(6))},
            "test": {"text": [f"test prompt {i}" for i in range(4)], "id": list(range(4))},
        },
    )


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nothing listens on (a connection is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spec(**fields: Any) -> HFDatasetConfig:
    return HFDatasetConfig.model_validate(fields)


# --- reading a folder written by save_to_disk -------------------------------------------------


def test_a_saved_dataset_dict_gives_the_first_rows_of_the_split_in_order(prompts_dir: Path):
    prepared = prepare_dataset(spec(hf=str(prompts_dir), split="test"), 2, extra=1)
    assert [p.text for p in prepared.prompts()] == ["test prompt 0", "test prompt 1"]
    assert [p.text for p in prepared.rows_after() or []] == ["test prompt 2"]
    assert [p.index for p in prepared.prompts()] == [0, 1]


def test_the_split_defaults_to_train_and_the_column_to_text(prompts_dir: Path):
    prepared = prepare_dataset(spec(hf=str(prompts_dir)), 3)
    assert [p.text for p in prepared.prompts()] == [f"train prompt {i}" for i in range(3)]
    assert prepared.provenance["split"] == "train"
    assert prepared.provenance["column"] == "text"


def test_the_result_records_where_the_prompts_came_from(prompts_dir: Path):
    prepared = prepare_dataset(spec(hf=str(prompts_dir), split="test", column="text"), 2)
    record = prepared.provenance
    expected_fingerprint = datasets.load_from_disk(str(prompts_dir))["test"]._fingerprint
    assert record == {
        "kind": "hf",
        "hf": str(prompts_dir),
        "path": str(prompts_dir.resolve()),
        "split": "test",
        "column": "text",
        "config": None,
        "revision": None,
        "fingerprint": expected_fingerprint,
        "n_available": 4,
    }


def test_a_single_saved_dataset_is_read_too(tmp_path: Path):
    folder = save_dataset(tmp_path / "one", prompt=["a", "b", "c"])
    prepared = prepare_dataset(spec(hf=str(folder)), 3)
    assert [p.text for p in prepared.prompts()] == ["a", "b", "c"]
    assert prepared.provenance["column"] == "prompt"  # text absent: prompt is tried next


def test_the_only_string_column_is_the_prompt_column(tmp_path: Path):
    folder = save_dataset(tmp_path / "q", question=["why?", "how?"], score=[1, 2])
    assert [p.text for p in prepare_dataset(spec(hf=str(folder)), 2).prompts()] == [
        "why?",
        "how?",
    ]


def test_only_the_rows_the_run_needs_are_taken(prompts_dir: Path):
    prepared = prepare_dataset(spec(hf=str(prompts_dir)), 2, extra=1)
    assert prepared.rows is not None and len(prepared.rows) == 3
    assert prepared.provenance["n_available"] == 6


def test_describing_an_hf_dataset_reads_nothing(tmp_path: Path):
    record = describe_dataset(spec(hf="org/name", split="test", column="q", config="en"))
    assert record == {
        "kind": "hf",
        "hf": "org/name",
        "path": None,
        "split": "test",
        "column": "q",
        "config": "en",
        "revision": None,
    }


# --- what is refused, and how ------------------------------------------------------------------


def test_an_unknown_split_lists_the_available_ones(prompts_dir: Path):
    with pytest.raises(ConfigError, match=r"no split 'validation'; available splits: train, test"):
        prepare_dataset(spec(hf=str(prompts_dir), split="validation"), 1)


def test_several_splits_without_train_need_a_split(tmp_path: Path):
    folder = save_splits(tmp_path / "d", {"dev": {"text": ["a"]}, "eval": {"text": ["b"]}})
    with pytest.raises(ConfigError, match=r"available splits: dev, eval") as info:
        prepare_dataset(spec(hf=str(folder)), 1)
    assert info.value.hint == "set dataset.split to one of them"


def test_a_missing_column_lists_the_columns_with_their_types(prompts_dir: Path):
    with pytest.raises(ConfigError, match=r"no column 'prompt'; columns: text \(string\), id"):
        prepare_dataset(spec(hf=str(prompts_dir), column="prompt"), 1)


def test_a_column_that_does_not_hold_strings_is_refused(prompts_dir: Path):
    with pytest.raises(ConfigError, match=r"column 'id' holds int64, not strings"):
        prepare_dataset(spec(hf=str(prompts_dir), column="id"), 1)


def test_no_recognisable_prompt_column_asks_for_one(tmp_path: Path):
    folder = save_dataset(tmp_path / "two", a=["x"], b=["y"])
    with pytest.raises(ConfigError, match=r"cannot tell which column") as info:
        prepare_dataset(spec(hf=str(folder)), 1)
    assert info.value.hint == "set dataset.column"


def test_fewer_rows_than_n_is_an_error_naming_the_count(prompts_dir: Path):
    with pytest.raises(ConfigError, match=r"has 4 prompts but 5 were asked for"):
        prepare_dataset(spec(hf=str(prompts_dir), split="test"), 5)


def test_an_empty_prompt_is_refused_with_its_row(tmp_path: Path):
    folder = save_dataset(tmp_path / "gaps", text=["fine", "  ", "fine"])
    with pytest.raises(ConfigError, match=r"row 1 of column 'text'.* is empty"):
        prepare_dataset(spec(hf=str(folder)), 3)


def test_a_missing_local_folder_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"local folder '\./no-such-folder' does not exist"):
        prepare_dataset(spec(hf="./no-such-folder"), 1)


def test_without_the_datasets_library_the_hint_installs_from_the_checkout(
    prompts_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ConfigError, match="needs the 'datasets' library") as info:
        prepare_dataset(spec(hf=str(prompts_dir)), 1)
    assert info.value.hint is not None
    assert 'pip install -e ".[datasets]"' in info.value.hint
    assert "pip install llenergymeasure" not in info.value.hint


def test_a_misspelt_dataset_key_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown key 'colum' in dataset: did you mean 'column'"):
        validate_experiment_dict(
            {"model": "m", "backend": "pytorch", "dataset": {"hf": "org/x", "colum": "q"}}
        )


# --- the hub: switched off, or unreachable -----------------------------------------------------


def test_an_unreachable_hub_fails_at_once_with_the_offline_hint(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(ConfigError, match="the HF hub is unreachable") as info:
        prepare_dataset(spec(hf="llem-test-org/no-such-dataset"), 1)
    assert f"127.0.0.1:{closed_port}" in info.value.message
    assert info.value.hint is not None and "HF_HUB_OFFLINE=1" in info.value.hint


def test_offline_a_dataset_that_is_not_cached_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, closed_port: int
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set"):
        prepare_dataset(spec(hf="llem-test-org/no-such-dataset", split="train"), 1)


# --- in a run: pre-flight, before anything loads -----------------------------------------------


def _config(dataset: Any, n: int = 2, **extra: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": "fake-model",
            "backend": "pytorch",
            "dataset": dataset,
            "n": n,
            "max_new_tokens": 4,
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
            **extra,
        }
    )


def test_a_bad_column_stops_the_run_in_pre_flight_before_the_load(prompts_dir: Path):
    engine = FakeEngine()
    orchestrator = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    with pytest.raises(PreFlightError, match=r"dataset: .*no column 'question'"):
        orchestrator.run(_config({"hf": str(prompts_dir), "column": "question"}))
    assert not engine.loaded


def test_a_run_measures_the_rows_pre_flight_read_and_warms_up_on_the_next_ones(prompts_dir: Path):
    class Recording(FakeEngine):
        texts: dict[str, list[str]]

        def prepare(self, prompts: Any, config: Any, *, phase: str = "measurement") -> Any:
            self.texts.setdefault(phase, []).extend(p.text for p in prompts)
            return super().prepare(prompts, config, phase=phase)

    engine = Recording()
    engine.texts = {}
    orchestrator = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    measured = orchestrator.run(_config({"hf": str(prompts_dir), "split": "test"}))
    assert engine.texts["measurement"] == ["test prompt 0", "test prompt 1"]
    assert engine.texts["warmup"] == ["test prompt 2"]
    assert measured.result.dataset["kind"] == "hf"
    assert measured.result.dataset["split"] == "test"
    assert measured.result.dataset["n_available"] == 4


def test_dry_run_checks_an_hf_dataset_like_a_run(prompts_dir: Path, write_yaml: Any):
    config = write_yaml(
        f"model: builtin:tiny\nbackend: pytorch\nn: 2\n"
        f"dataset: {{hf: {prompts_dir}, split: test, column: id}}\n"
    )
    result = runner.invoke(app, ["run", str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "column 'id' holds int64, not strings" in result.output


def test_dry_run_of_a_study_sweeping_splits(prompts_dir: Path, write_yaml: Any):
    study = write_yaml(
        f"model: builtin:tiny\nbackend: pytorch\nn: 2\n"
        f"dataset: {{hf: {prompts_dir}}}\n"
        "sweep:\n  dataset.split: [train, test]\n",
        name="study.yaml",
    )
    result = runner.invoke(app, ["run", str(study), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [e["dataset"]["split"] for e in payload["experiments"]] == ["train", "test"]
    assert all(e["dataset"]["hf"] == str(prompts_dir) for e in payload["experiments"])


# --- a study over an HF dataset saved to disk, with builtin:tiny --------------------------------


def test_a_study_over_an_hf_dataset_on_disk_runs_builtin_tiny(
    prompts_dir: Path, write_yaml: Any, tmp_path: Path
):
    import llenergymeasure as llem
    from llenergymeasure.study.manifest import load_manifest

    study = write_yaml(
        "name: hf-study\nmodel: builtin:tiny\nbackend: pytorch\nn: 2\nmax_new_tokens: 2\n"
        f"dataset: {{hf: {prompts_dir}, column: text}}\n"
        "warmup: {n_warmup: 1, thermal_floor_seconds: 0}\nbaseline: {enabled: false}\n"
        "sweep:\n  dataset.split: [train, test]\n"
        "execution: {n_cycles: 1, config_gap_seconds: 0, cycle_gap_seconds: 0, "
        "reuse_engine: true}\n",
        name="study.yaml",
    )
    out = tmp_path / "results"
    result = runner.invoke(
        app, ["run", str(study), "--set", "chat_template=true", "-o", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    (study_dir,) = out.iterdir()
    summary = llem.StudyResult.from_json(study_dir / "study_summary.json")
    assert (summary.counts.completed, summary.counts.failed) == (2, 0)
    splits = []
    for rel in summary.result_files:
        experiment = llem.ExperimentResult.from_json(study_dir / rel)
        assert experiment.dataset["kind"] == "hf" and experiment.dataset["n_available"] in (4, 6)
        assert experiment.dataset["chat_template"]["applied"] is True
        assert experiment.config.chat_template is True
        assert experiment.n_requests == 2
        splits.append(experiment.dataset["split"])
    assert sorted(splits) == ["test", "train"]
    assert load_manifest(study_dir).base_overrides == {"chat_template": True}
