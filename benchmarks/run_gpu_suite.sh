#!/usr/bin/env bash
# The GPU benchmark suite (issue 7), for a machine with an NVIDIA GPU and the package installed
# with the [pytorch] extra. Writes result directories under .devout/suite, copies the fidelity
# studies into benchmarks/results/ and the tables into BENCHMARKS.md.
#   bash benchmarks/run_gpu_suite.sh                 # every stage, in order (~35 min on one H100)
#   bash benchmarks/run_gpu_suite.sh tests noise     # chosen stages (the model is built if missing)
# Stages: idle tests noise overhead curve rep tables. With $OUT set (the lent GPU machine), each
# stage also copies what it produced there. STUDY_LIMIT_S=N stops a study after N s; running its
# stage again resumes it (for machines with a per-command time limit).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out=.devout/suite
model=.devout/llama8b
mkdir -p "$out"

# $OUT comes back only a few folders deep: directories travel as one tarball each.
keep() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT/$2"
  if [ -d "$1" ]; then tar czf "$OUT/$2/$(basename "$1").tgz" -C "$(dirname "$1")" "$(basename "$1")"
  else cp "$1" "$OUT/$2/"; fi
}
ensure_model() { python benchmarks/make_llama8b_shaped.py --out "$model"; }

stage_idle() {  # nvidia-smi's own view of idle power, for the baseline-honesty table
  nvidia-smi --query-gpu=timestamp,power.draw,temperature.gpu --format=csv -lms 500 \
    > "$out/smi_idle.csv" &
  local smi=$!; sleep 20; kill "$smi"
  keep "$out/smi_idle.csv" suite
}
stage_tests() {
  python -m pytest -m gpu tests/integration -q -rA 2>&1 | tee "$out/gpu_tests.txt"
  keep "$out/gpu_tests.txt" suite
}
stage_noise() {
  ensure_model
  python benchmarks/decode_noise.py --model "$model" --out "$out" --rounds 4
  keep "$out/decode_noise.json" suite
}
stage_overhead() {
  ensure_model
  python benchmarks/harness_overhead.py --model "$model" --cases 1:6,8:24 --reps 5 --compile \
    --out "$out"
  python benchmarks/harness_overhead.py --model "$model" --cases 1:3,8:16 --reps 4 --out "$out"
  for f in "$out"/harness_overhead_*; do keep "$f" suite; done
}
run_study() {  # config name, results directory name; resumes an unfinished study of that name
  ensure_model
  local dir limit=${STUDY_LIMIT_S:-0}  # SIGTERM the study after this many s (0: never);
  # a stopped study leaves a valid manifest and the next call of its stage resumes it
  dir=$(ls -d "$out/$2"/*/ 2>/dev/null | tail -1 || true)
  if [ -n "$dir" ] && ! grep -q '"not_run": 0' "$dir/study_summary.json" 2>/dev/null; then
    timeout -s TERM "$limit" python -m llenergymeasure run --resume "$dir" || status=$?
  else
    rm -rf "${out:?}/$2"
    timeout -s TERM "$limit" python -m llenergymeasure run "benchmarks/configs/$1.yaml" \
      --no-gaps -o "$out/$2" || status=$?
  fi
  dir=$(ls -d "$out/$2"/*/ | tail -1)
  keep "${dir%/}" "partial_$2"  # kept even when the study was stopped part-way
  [ "${status:-0}" -eq 0 ] || return "$status"
  rm -rf "benchmarks/results/$2"
  mkdir -p "benchmarks/results/$2"
  cp -r "$dir". "benchmarks/results/$2/"
  keep "benchmarks/results/$2" results
}
stage_curve() { run_study fidelity_batch_curve fidelity_curve; }
stage_rep() { run_study fidelity_repeatability fidelity_repeatability; }
stage_tables() {  # the suite's raw outputs go under benchmarks/results/ beside the studies
  mkdir -p benchmarks/results/suite
  for f in smi_idle.csv decode_noise.json gpu_tests.txt harness_overhead_compiled.json \
    harness_overhead_compiled.md harness_overhead_eager.json harness_overhead_eager.md; do
    [ -f "$out/$f" ] && cp "$out/$f" benchmarks/results/suite/
  done
  [ -f "$out/smi_idle.csv" ] && cp "$out/smi_idle.csv" benchmarks/results/fidelity_curve/
  (cd benchmarks && python fidelity_tables.py)
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(idle tests noise overhead curve rep tables)
for s in "${stages[@]}"; do
  echo "=== stage $s ($(date -u +%H:%M:%S))"
  "stage_$s"
done
