"""The ``aienergyscore`` dataset: pinned hub revision, cache, offline behaviour."""

from __future__ import annotations

import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llenergymeasure.datasets import (
    AIENERGYSCORE_REPO_ID,
    AIENERGYSCORE_REVISION,
    Prompt,
    describe_dataset,
    load_prompts,
)
from llenergymeasure.datasets.aienergyscore import pick_data_files, read_prompt_column
from llenergymeasure.exceptions import ConfigError


def write_parquet(path: Path, texts: list[str | None], column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({column: texts}), path)
    return path


class FakeDownloader:
    """Serves a local folder as the hub snapshot and records its calls."""

    def __init__(self, folder: Path, *, cached: bool = True) -> None:
        self.folder = folder
        self.cached = cached
        self.calls: list[dict[str, object]] = []

    def __call__(
        self, *, repo_id: str, revision: str, cache_dir: Path | None, local_files_only: bool
    ) -> Path:
        self.calls.append(
            {"repo_id": repo_id, "revision": revision, "local_files_only": local_files_only}
        )
        if local_files_only and not self.cached:
            raise FileNotFoundError("not in cache")
        return self.folder


def test_offline_with_an_empty_cache_is_a_quick_clear_error_naming_the_jsonl_alternative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    tried: list[object] = []

    def no_network(*args: object) -> None:
        tried.append(args)
        raise OSError("network unreachable (test)")

    # quick: no name lookup or connection is even tried (a timeout to wait out would be the slow
    # path; with HF_HUB_OFFLINE unset this list fills)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    with pytest.raises(ConfigError) as err:
        load_prompts("aienergyscore", 10, cache_dir=tmp_path / "empty-cache")
    assert tried == []
    assert "dataset 'aienergyscore' is not cached and the HF hub is unreachable" in str(err.value)
    assert err.value.hint is not None
    assert "--dataset path/to/prompts.jsonl" in err.value.hint
    assert '{"prompt": "..."}' in err.value.hint
    assert err.value.exit_code == 2


def test_a_pre_populated_hf_cache_is_used_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real hub client finds the pinned snapshot in the cache layout without any network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf-cache"
    repo_folder = "datasets--" + AIENERGYSCORE_REPO_ID.replace("/", "--")
    snapshot = cache / repo_folder / "snapshots" / AIENERGYSCORE_REVISION
    write_parquet(snapshot / "data" / "train-00000-of-00001.parquet", ["alpha", "beta", "gamma"])
    assert load_prompts("aienergyscore", 2, cache_dir=cache) == [
        Prompt("alpha", index=0),
        Prompt("beta", index=1),
    ]
    record = describe_dataset("aienergyscore", cache_dir=cache)
    assert record["n_available"] == 3
    assert record["files"][0]["name"] == "train-00000-of-00001.parquet"


def test_the_pinned_revision_is_requested_and_the_cache_is_tried_first(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data.parquet", ["p0", "p1"])
    fake = FakeDownloader(tmp_path)
    load_prompts("aienergyscore", 1, downloader=fake)
    assert fake.calls == [
        {
            "repo_id": "AIEnergyScore/text_generation",
            "revision": "2dc92b2ee2cd9776a51ccf08c6c2ab04138370c3",
            "local_files_only": True,
        }
    ]


def test_when_not_cached_it_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    write_parquet(tmp_path / "data.parquet", ["p0", "p1"])
    fake = FakeDownloader(tmp_path, cached=False)
    assert [p.text for p in load_prompts("aienergyscore", 2, downloader=fake)] == ["p0", "p1"]
    assert [c["local_files_only"] for c in fake.calls] == [True, False]


def test_a_failed_download_gives_the_unreachable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(**_: object) -> Path:
        raise ConnectionError("no route to host")

    with pytest.raises(ConfigError, match="not cached and the HF hub is unreachable"):
        load_prompts("aienergyscore", 1, downloader=unreachable)


def test_first_n_prompts_in_dataset_order_and_too_many_is_an_error(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data.parquet", [f"p{i}" for i in range(5)])
    fake = FakeDownloader(tmp_path)
    assert [p.text for p in load_prompts("aienergyscore", 3, downloader=fake)] == ["p0", "p1", "p2"]
    with pytest.raises(ConfigError) as err:
        load_prompts("aienergyscore", 6, downloader=fake)
    assert "aienergyscore" in str(err.value) and "5" in str(err.value) and "6" in str(err.value)


def test_hub_prompts_have_no_per_prompt_budget(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data.parquet", ["p0"])
    (prompt,) = load_prompts("aienergyscore", 1, downloader=FakeDownloader(tmp_path))
    assert prompt.max_new_tokens is None


def test_csv_and_jsonl_data_files_are_parsed_too(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text('id,text\n1,"multi\nline"\n2,plain\n', encoding="utf-8")
    assert read_prompt_column(csv) == ["multi\nline", "plain"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert read_prompt_column(jsonl) == ["a", "b"]


def test_prompt_column_is_text_then_prompt_then_the_only_string_column(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", ["x"], column="prompt")
    assert read_prompt_column(tmp_path / "a.parquet") == ["x"]
    write_parquet(tmp_path / "b.parquet", ["y"], column="content")
    assert read_prompt_column(tmp_path / "b.parquet") == ["y"]
    pq.write_table(pa.table({"a": ["1"], "b": ["2"]}), tmp_path / "c.parquet")
    with pytest.raises(ConfigError, match="columns: a, b"):
        read_prompt_column(tmp_path / "c.parquet")


def test_null_and_blank_rows_are_dropped(tmp_path: Path) -> None:
    write_parquet(tmp_path / "d.parquet", ["a", None, "  ", "b"])
    assert read_prompt_column(tmp_path / "d.parquet") == ["a", "b"]


def test_data_file_choice_is_deterministic(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data" / "train-00001-of-00002.parquet", ["b"])
    write_parquet(tmp_path / "data" / "train-00000-of-00002.parquet", ["a"])
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", ["t"])
    (tmp_path / "other.csv").write_text("text\nc\n", encoding="utf-8")
    picked = [p.relative_to(tmp_path).as_posix() for p in pick_data_files(tmp_path)]
    assert picked == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    prompts = load_prompts("aienergyscore", 2, downloader=FakeDownloader(tmp_path))
    assert [p.text for p in prompts] == ["a", "b"]


def test_describe_without_a_cache_gives_hub_id_and_revision_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake = FakeDownloader(tmp_path, cached=False)
    record = describe_dataset("aienergyscore", downloader=fake)
    assert record == {
        "kind": "aienergyscore",
        "hub_id": AIENERGYSCORE_REPO_ID,
        "revision": AIENERGYSCORE_REVISION,
    }
    assert all(c["local_files_only"] for c in fake.calls)


def test_a_cached_snapshot_without_data_files_is_treated_as_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    write_parquet(full / "data.parquet", ["p0"])

    def downloader(*, local_files_only: bool, **_: object) -> Path:
        return empty if local_files_only else full

    assert [p.text for p in load_prompts("aienergyscore", 1, downloader=downloader)] == ["p0"]
