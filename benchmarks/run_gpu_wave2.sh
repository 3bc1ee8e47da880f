#!/usr/bin/env bash
# GPU checks of engine reuse (issue 14) and vLLM (issue 15), one stage per lent-machine call.
# Needs the package's sources (PYTHONPATH=src), pydantic/platformdirs and, for the vllm stages,
# vLLM 0.26.0 (../shared/tools/gpu-vllm-pack.sh packs it; the header says how to unpack it into
# /root/vsite). Results under .devout/wave2/; with $OUT set, each study travels as a tarball.
#   bash benchmarks/run_gpu_wave2.sh pt_reuse pt_fresh        # PyTorch compiled, reuse vs fresh
#   bash benchmarks/run_gpu_wave2.sh vllm_checks vllm_reuse    # vLLM prefix cache + reuse study
#   bash benchmarks/run_gpu_wave2.sh vllm_fresh vllm_tests
# Tables: python benchmarks/reuse_tables.py --pair ... (see that script).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
out=.devout/wave2
model=.devout/llama8b
mkdir -p "$out"

keep() {  # $OUT comes back only two folders deep: a directory travels as one tarball
  [ -n "${OUT:-}" ] || return 0
  if [ -d "$1" ]; then tar czf "$OUT/$(basename "$1").tgz" -C "$(dirname "$1")" "$(basename "$1")"
  else cp "$1" "$OUT/"; fi
}
ensure_model() { python3 benchmarks/make_llama8b_shaped.py --out "$model"; }

study() {  # yaml, result name, extra flags...
  local yaml=$1 name=$2; shift 2
  ensure_model
  rm -rf "${out:?}/$name"
  local t0=$SECONDS
  python3 -m llenergymeasure run "benchmarks/configs/$yaml.yaml" --no-gaps -o "$out/$name" "$@" \
    > "$out/$name.log" 2>&1 || echo "study $name exited $?"
  tail -n 25 "$out/$name.log"
  echo "study $name: $((SECONDS - t0)) s"
  keep "$out/$name.log"
  keep "$(ls -d "$out/$name"/*/ | tail -1 | sed 's:/$::')"
}
stage_pt_reuse() { study reuse_pytorch_compiled pt_reuse; }
stage_pt_fresh() { study reuse_pytorch_compiled pt_fresh --no-reuse-engine; }
stage_vllm_reuse() { study reuse_vllm vllm_reuse; }
stage_vllm_fresh() { study reuse_vllm vllm_fresh --no-reuse-engine; }
stage_vllm_checks() {  # prefix-cache reset and llem-vs-bare overhead on one engine
  ensure_model
  python3 benchmarks/vllm_engine_checks.py --model "$model" --out "$out/vllm_checks.json"
  keep "$out/vllm_checks.json"
}
stage_pt_tests() {
  python3 -m pytest -m "gpu and not vllm" tests/integration -q -rA -p no:cacheprovider 2>&1 \
    | tee "$out/gpu_tests_pytorch.txt" || true
  keep "$out/gpu_tests_pytorch.txt"
}
stage_vllm_tests() {
  ensure_model
  LLEM_TEST_VLLM_MODEL=$PWD/$model python3 -m pytest -m "gpu and vllm" tests/integration -q -rA \
    -p no:cacheprovider 2>&1 | tee "$out/gpu_tests_vllm.txt" || true
  keep "$out/gpu_tests_vllm.txt"
}

for s in "$@"; do
  echo "=== stage $s ($(date -u +%H:%M:%S))"
  "stage_$s"
done
