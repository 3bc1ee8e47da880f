"""An unreachable Hugging Face Hub fails pre-flight at once, with exit code 2 and the offline hint.

No test here needs the network: ``HF_ENDPOINT`` points at a local port where nothing listens
(the connection is refused at once), at a socket that accepts but never answers (the probe gives
up after ``HF_HUB_ETAG_TIMEOUT``), or at a small local HTTP server.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llenergymeasure import hub
from llenergymeasure.cli.app import app
from llenergymeasure.config.models import ExperimentConfig, LoRAConfig
from llenergymeasure.datasets.aienergyscore import AIENERGYSCORE_REPO_ID, AIENERGYSCORE_REVISION
from llenergymeasure.engines.pytorch.engine import PyTorchBackend

cli = CliRunner()
UNCACHED_MODEL = "llem-test-org/not-a-cached-model"


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub switched on, and no probe answer left over from another test."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "_probes", {})


@pytest.fixture
def closed_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


@pytest.fixture
def silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.2")
        yield endpoint


@pytest.fixture
def answering_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local HTTP server that answers every request with 404."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


# --- the probe --------------------------------------------------------------------------------


def test_a_refused_connection_is_unreachable(closed_endpoint: str):
    reason = hub.probe_hub()
    assert reason is not None and reason.startswith(f"{closed_endpoint} cannot be reached")


def test_an_endpoint_that_never_answers_is_given_up_on(silent_endpoint: str):
    assert hub.probe_hub() == f"{silent_endpoint} cannot be reached (no answer within 0.2 s)"


def test_any_http_answer_means_reachable(answering_endpoint: str):
    assert hub.probe_hub() is None


def test_the_answer_is_reused_within_a_pre_flight(closed_endpoint: str, monkeypatch):
    first = hub.probe_hub()
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint)  # unchanged: same cache entry
    calls: list[object] = []
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: calls.append(a))
    assert hub.probe_hub() == first and calls == []


# --- a hub model -----------------------------------------------------------------------------


def make_config(model: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": model,
            "backend": "pytorch",
            "dataset": {"n": 1, "input_len": 4},
            "max_new_tokens": 1,
            "warmup": {"n_warmup": 0, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
        }
    )


def test_pytorch_pre_flight_names_the_unreachable_hub_and_the_way_offline(closed_endpoint: str):
    (problem,) = PyTorchBackend().preflight(make_config(UNCACHED_MODEL))
    assert f"model: '{UNCACHED_MODEL}' is not in the HF cache" in problem
    assert "the HF hub is unreachable" in problem and closed_endpoint in problem
    assert "HF_HUB_OFFLINE=1" in problem and "local path" in problem


def test_an_uncached_lora_adapter_is_checked_the_same_way(closed_endpoint: str, tiny_model_dir):
    config = make_config(str(tiny_model_dir)).model_copy(
        update={"lora": LoRAConfig(adapter_id="llem-test-org/no-adapter")}
    )
    (problem,) = PyTorchBackend().preflight(config)
    assert problem.startswith("lora.adapter_id: 'llem-test-org/no-adapter' is not in the HF cache")
    assert "HF_HUB_OFFLINE=1" in problem


def test_a_reachable_hub_leaves_the_download_to_the_engine(answering_endpoint: str):
    assert PyTorchBackend().preflight(make_config(UNCACHED_MODEL)) == []


def test_llem_run_of_an_unreachable_hub_model_exits_2_with_the_hint(
    closed_endpoint: str, tmp_path: Path
):
    args = ["run", "-m", UNCACHED_MODEL, "-b", "pytorch", "-n", "1", "--input-len", "4"]
    result = cli.invoke(app, [*args, "--max-new-tokens", "1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "pre-flight checks failed" in result.output
    assert "the HF hub is unreachable" in result.output and "HF_HUB_OFFLINE=1" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- the default dataset ---------------------------------------------------------------------


def cache_aienergyscore(hf_cache: Path) -> None:
    """A snapshot of the pinned revision in the HF cache, as a download leaves it."""
    repo = "datasets--" + AIENERGYSCORE_REPO_ID.replace("/", "--")
    snapshot = hf_cache / repo / "snapshots" / AIENERGYSCORE_REVISION
    snapshot.mkdir(parents=True)
    pq.write_table(pa.table({"text": [f"p{i}" for i in range(4)]}), snapshot / "train.parquet")


def test_llem_run_with_the_default_dataset_unreachable_exits_2(
    closed_endpoint: str, tmp_path: Path
):
    result = cli.invoke(app, ["run", "-m", "builtin:tiny", "-n", "1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "dataset 'aienergyscore' is not cached and the HF hub is unreachable" in result.output
    assert "--dataset path/to/prompts.jsonl" in result.output


def test_dry_run_says_when_the_default_dataset_needs_the_network(
    monkeypatch: pytest.MonkeyPatch,
):
    result = cli.invoke(app, ["run", "-m", "builtin:tiny", "-n", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        "note: dataset aienergyscore is not in the local HF cache: the run downloads it "
        "(needs the network)" in result.stdout
    )
    as_json = cli.invoke(app, ["run", "-m", "builtin:tiny", "-n", "2", "--dry-run", "--json"])
    (need,) = json.loads(as_json.stdout)["needs_network"]
    assert need.startswith("dataset aienergyscore is not in the local HF cache")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = cli.invoke(app, ["run", "-m", "builtin:tiny", "-n", "2", "--dry-run"])
    assert "HF_HUB_OFFLINE is set, so the run would stop at pre-flight" in offline.stdout


def test_dry_run_says_nothing_about_the_network_once_the_dataset_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import huggingface_hub.constants

    # the hub client reads HF_HUB_CACHE once, when it is first imported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    cache_aienergyscore(tmp_path / "hf-cache")
    result = cli.invoke(app, ["run", "-m", "builtin:tiny", "-n", "2", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["needs_network"] == []


def test_dry_run_says_when_a_hub_model_needs_the_network():
    result = cli.invoke(
        app, ["run", "-m", UNCACHED_MODEL, "-b", "pytorch", "-d", "synthetic", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert f"note: model {UNCACHED_MODEL} is not in the local HF cache" in result.stdout


def test_a_cached_adapter_is_found_by_its_own_file(
    closed_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # an adapter repository has adapter_config.json and no config.json: the check looks for
    # the file it is told to (it used to look for config.json whatever it was told)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    repo = tmp_path / "hf-cache" / "models--llem-test-org--cached-adapter"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "adapter_config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    problem = hub.hub_model_problem(
        "llem-test-org/cached-adapter", "lora.adapter_id", filename="adapter_config.json"
    )
    assert problem is None
