#!/usr/bin/env bash
# GPU studies of engine reuse (issue 14), vLLM (issue 15) and the prefill/decode split (issue 16),
# one or more stages per lent-machine call. Needs the package's sources (PYTHONPATH=src),
# pydantic/platformdirs and, for the vllm stages, vLLM 0.26.0 (../shared/tools/gpu-vllm-pack.sh
# packs it; its header says how to unpack it into /root/vsite).
#
#   bash benchmarks/run_gpu_studies.sh pt_fresh pt_reuse pt_256       # PyTorch compiled
#   bash benchmarks/run_gpu_studies.sh pt_table pt_phase               # issues 15, 16 (PyTorch)
#   bash benchmarks/run_gpu_studies.sh vllm_reuse vllm_fresh vllm_256  # vLLM
#   bash benchmarks/run_gpu_studies.sh vllm_table pt_table             # issue 15 engine table
#   bash benchmarks/run_gpu_studies.sh vllm_checks pt_tests vllm_tests  # one-engine checks, tests
#   bash benchmarks/run_gpu_studies.sh vllm_online                      # vllm serve under load
#
# Device calls (64 MiB a call; the tree is ~5 MiB, p0/p1 57 MiB, p2 55 MiB, .whl 2.8 MiB): send
# the pydantic/platformdirs wheels with p2, not p0, e.g. call 1 carry [.whl, .gpuwheels/p2]:
#   pip install --target /root/site .whl/*.whl; mkdir -p /root/stage; cp .gpuwheels/p2/* /root/stage/
#   then PYTHONPATH=/root/site bash benchmarks/run_gpu_studies.sh pt_...   (PyTorch needs no vLLM)
# calls 2 and 3 carry p0 and p1 (cp to /root/stage), the last one unpacks vLLM (pack script header).
# Results go under .devout/studies/ (kept on the machine between calls while it is held). A call
# has a deadline (GPU_CALL_SECONDS, default 560 s from the script's start): a study still running
# 20 s before it is stopped with SIGINT (llem records the run as interrupted, exit 130) and the
# next call's same stage resumes it (`llem run --resume`); a stage that is already complete is
# skipped. With $OUT set, every study directory travels back as one tarball per call.
# Tables: benchmarks/reuse_tables.py (issue 14), engine_table.py (issue 15), phase_tables.py (16),
# online_tables.py (20: --online $out/online --offline $out/vllm_offline_ref).
#
# Run on 2026-12-07 (one H100; results in benchmarks/results/h100_1207.tar.xz): pt_phase,
# pt_overhead, vllm_online with its offline reference, vllm_checks, and pt_b8_fresh cut after 2
# of its 5 runs. What is left to run (issue 31), H100 minutes measured that day:
#   pt_b8_fresh (5 runs of ~60 s each, a fresh process per run: on a new machine a new study;
#   the 2 archived runs are another machine's and must not be resumed into it) then
#   pt_b8_reuse (5 runs on one engine) on the SAME machine, then
#   `llem compare <pt_b8_fresh study> <pt_b8_reuse study>`; flip PyTorch's reuse default
#   (config/catalogue.py, reuse_proven) only if it holds;
#   pt_tests (PyTorch GPU tests) and vllm_tests (~2 min on the H200) on this code.
# The machine is handed back after 30 s idle: send the three calls back to back, decide nothing
# between them. A machine lost between calls costs its start (~2 min) and all three transfers.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
out=.devout/studies
model=.devout/llama8b
deadline=$(( $(date +%s) + ${GPU_CALL_SECONDS:-560} ))
mkdir -p "$out"

left() { echo $(( deadline - $(date +%s) )); }
ensure_model() { python3 benchmarks/make_llama8b_shaped.py --out "$model"; }

study() {  # yaml, result name, extra flags...: run, or resume, one study under the deadline
  local yaml=$1 name=$2; shift 2
  local dir="$out/$name"
  if [ -f "$dir/.complete" ]; then echo "study $name: already complete"; return 0; fi
  local budget=$(( $(left) - 20 ))
  if [ "$budget" -lt 60 ]; then echo "study $name: not started, ${budget} s left in this call"; return 0; fi
  ensure_model
  local previous; previous=$(ls -d "$dir"/*/ 2>/dev/null | tail -1)
  local t0=$SECONDS rc=0
  if [ -n "$previous" ]; then
    echo "study $name: resuming $previous (${budget} s left)"
    # a resumed study keeps its execution settings (reuse on/off) from its manifest
    timeout -s INT -k 15 "$budget" python3 -m llenergymeasure run --resume "${previous%/}" \
      --no-gaps >> "$dir.log" 2>&1 || rc=$?
  else
    echo "study $name: starting (${budget} s left)"
    mkdir -p "$dir"
    timeout -s INT -k 15 "$budget" python3 -m llenergymeasure run "benchmarks/configs/$yaml.yaml" \
      --no-gaps -o "$dir" "$@" > "$dir.log" 2>&1 || rc=$?
  fi
  tail -n 12 "$dir.log"
  echo "study $name: exit $rc after $((SECONDS - t0)) s"
  if [ "$rc" -eq 0 ]; then touch "$dir/.complete"; fi
}

stage_pt_fresh() { study reuse_pytorch_compiled pt_fresh --no-reuse-engine; }
stage_pt_reuse() { study reuse_pytorch_compiled pt_reuse --reuse-engine; }
stage_pt_256() { study phase_pytorch_256 pt_256; }
stage_pt_phase() { study phase_pytorch pt_phase --reuse-engine; }  # issue 16: split + 2x output
stage_pt_overhead() {  # issues 28/31: llem vs a bare generate loop after the window change
  ensure_model
  python3 benchmarks/harness_overhead.py --model "$model" --cases 8:32 --reps 5 --compile \
    --out "$out/overhead" 2>&1 | tee "$out/overhead.log"
}
stage_pt_b8_fresh() { study reuse_pytorch_b8 pt_b8_fresh --no-reuse-engine; }  # issue 31 item 5
stage_pt_b8_reuse() { study reuse_pytorch_b8 pt_b8_reuse --reuse-engine; }
stage_pt_fast() {  # issue 16: the batch-8 split with 10 ms sampling
  LLEM_CONFIG=benchmarks/configs/user_fast_sampling.yaml study phase_pytorch_fast_sampling pt_fast
}
stage_vllm_reuse() { study reuse_vllm vllm_reuse --reuse-engine; }
stage_vllm_fresh() { study reuse_vllm vllm_fresh --no-reuse-engine; }
stage_vllm_256() { study phase_vllm_256 vllm_256 --reuse-engine; }  # issue 16: split + 2x output
stage_vllm_table() { study table_vllm vllm_table --reuse-engine; }  # issue 15: mns 1/8/32/128
stage_pt_table() { study table_pytorch pt_table --no-reuse-engine; }  # issue 15: eager, compiled
stage_vllm_checks() {  # prefix-cache reset and llem-vs-bare overhead on one engine
  ensure_model
  python3 benchmarks/vllm_engine_checks.py --model "$model" --out "$out/vllm_checks.json"
}
stage_vllm_online() {  # issue 20: `vllm serve` under load, one server for all rates
  ensure_model
  # `vllm` is always this shim, first on PATH: vLLM run by the python3 that runs llem. The
  # unpacked site's own bin/vllm (gpu-vllm-pack.sh: pip --target on the packing machine) starts
  # with that machine's interpreter (#!/root/.pyenv/versions/3.11.7/bin/python3), absent here,
  # so exec fails with "No such file or directory" (the first attempt of 2026-12-07).
  mkdir -p .devout/bin
  printf '#!/bin/sh\nexec python3 -c "import sys; from vllm.entrypoints.cli.main import main; sys.argv[0] = \\"vllm\\"; sys.exit(main())" "$@"\n' > .devout/bin/vllm
  chmod +x .devout/bin/vllm
  export PATH=$PWD/.devout/bin:$PATH
  # each finished rate is written at once: a sweep cut by the call's deadline keeps those
  timeout -s INT -k 15 $(( $(left) - 20 )) python3 benchmarks/online_vllm_rates.py \
    --model "$model" --rates 1,4,16,64,inf --n 400 --n-at 1=60,4=120,16=240 \
    --out "$out/online" 2>&1 | tee "$out/online.log"
  study online_offline_reference vllm_offline_ref  # the inf point's offline run, same prompts
}
stage_pt_tests() {
  python3 -m pytest -m "gpu and not vllm" tests/integration -q -rA -p no:cacheprovider 2>&1 \
    | tee "$out/gpu_tests_pytorch.txt" || true
}
stage_vllm_tests() {
  ensure_model
  LLEM_TEST_VLLM_MODEL=$PWD/$model python3 -m pytest -m "gpu and vllm" tests/integration -q -rA \
    -p no:cacheprovider 2>&1 | tee "$out/gpu_tests_vllm.txt" || true
}

for s in "$@"; do
  echo "=== stage $s ($(date -u +%H:%M:%S), $(left) s left)"
  "stage_$s"
done
if [ -n "${OUT:-}" ]; then  # $OUT comes back only two folders deep: one tarball per call
  tar czf "$OUT/studies.tgz" --exclude='*.safetensors' -C .devout studies
  ls -la "$OUT"
fi
