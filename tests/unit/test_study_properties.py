"""Property tests: any valid sweep expands to the full per-backend Cartesian product."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llenergymeasure.config.catalogue import ENGINES
from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.study import expand_study


def distinct(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(values, min_size=1, max_size=3, unique=True)


def universal_values(backends: list[str]) -> dict[str, st.SearchStrategy[list[Any]]]:
    precisions = [
        p
        for p in ENGINES["pytorch"].precisions
        if all(p in ENGINES[b].precisions for b in backends)
    ]
    return {
        "precision": distinct(st.sampled_from(precisions)),
        "n": distinct(st.integers(1, 1000)),
        "random_seed": distinct(st.integers(0, 2**32 - 1)),  # what numpy seeding accepts
        "decoder.temperature": distinct(st.integers(0, 20).map(lambda i: i / 10)),
        "warmup.n_warmup": distinct(st.integers(0, 10)),
    }


SCOPED: dict[str, dict[str, st.SearchStrategy[list[Any]]]] = {
    "pytorch": {
        "pytorch.batch_size": distinct(st.integers(1, 64)),
        "pytorch.num_processes": distinct(st.integers(1, 8)),
        "pytorch.attn_implementation": distinct(
            st.sampled_from(["sdpa", "eager", "flash_attention_2"])
        ),
        "pytorch.torch_compile": distinct(st.booleans()),
    },
    "vllm": {
        "vllm.max_num_seqs": distinct(st.integers(1, 512)),
        "vllm.block_size": distinct(st.sampled_from([8, 16, 32])),
        "vllm.gpu_memory_utilization": distinct(st.integers(1, 10).map(lambda i: i / 10)),
        "vllm.enable_prefix_caching": distinct(st.booleans()),
    },
}


@st.composite
def studies(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    backends = draw(st.sampled_from([["pytorch"], ["pytorch", "vllm"]]))
    pool = universal_values(backends)
    keys = draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=3, unique=True))
    sweep = {k: draw(pool[k]) for k in keys}
    for b in backends:
        scoped_keys = draw(st.lists(st.sampled_from(sorted(SCOPED[b])), max_size=2, unique=True))
        sweep.update({k: draw(SCOPED[b][k]) for k in scoped_keys})
    study = {"model": "org/model", "backend": backends, "sweep": sweep}
    return study, backends


@settings(max_examples=50, deadline=None)
@given(studies())
def test_each_backend_gets_the_product_of_its_dimensions(case):
    data, backends = case
    study = expand_study(data)
    sweep = data["sweep"]
    universal = [len(v) for k, v in sweep.items() if k.split(".")[0] not in backends]
    expected = {
        b: math.prod(universal)
        * math.prod(len(v) for k, v in sweep.items() if k.startswith(f"{b}."))
        for b in backends
    }
    assert Counter(e.backend for e in study.experiments) == expected
    assert study.skipped == []


@settings(max_examples=50, deadline=None)
@given(studies())
def test_no_two_expanded_experiments_share_a_config_hash(case):
    data, _ = case
    study = expand_study(data)
    hashes = [measurement_config_hash(e) for e in study.experiments]
    assert len(hashes) == len(set(hashes))


@settings(max_examples=25, deadline=None)
@given(studies(), st.integers(1, 10), st.sampled_from(["sequential", "interleaved", "shuffled"]))
def test_design_hash_ignores_the_execution_block(case, n_cycles, order):
    data, _ = case
    plain = expand_study(data)
    executed = expand_study({**data, "execution": {"n_cycles": n_cycles, "cycle_order": order}})
    assert executed.study_design_hash == plain.study_design_hash
