#!/usr/bin/env bash
# The GPU benchmark suite (issue 7) in one command, for a machine with an NVIDIA GPU and the
# package installed with the [pytorch] extra. Writes result directories under .devout/suite and
# the tables into BENCHMARKS.md. Takes about 30 minutes on one H100.
#   bash benchmarks/run_gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out=.devout/suite
mkdir -p "$out"

python benchmarks/make_llama8b_shaped.py --out .devout/llama8b
nvidia-smi --query-gpu=timestamp,power.draw,temperature.gpu --format=csv -lms 500 > "$out/smi_idle.csv" &
smi=$!; sleep 20; kill "$smi"

# 1. harness overhead, both decode paths
python benchmarks/harness_overhead.py --model .devout/llama8b --cases 1:6,8:24 --reps 5 --compile --out "$out"
python benchmarks/harness_overhead.py --model .devout/llama8b --cases 1:3,8:16 --reps 5 --out "$out"

# 2-6. batch curve (eager + compiled) and repeatability studies
python -m llenergymeasure run benchmarks/configs/fidelity_batch_curve.yaml --no-gaps -o "$out/curve"
python -m llenergymeasure run benchmarks/configs/fidelity_repeatability.yaml --no-gaps -o "$out/rep"

rm -rf benchmarks/results/fidelity_curve benchmarks/results/fidelity_repeatability
mkdir -p benchmarks/results/fidelity_curve benchmarks/results/fidelity_repeatability
cp -r "$(ls -d "$out"/curve/*/ | tail -1)". benchmarks/results/fidelity_curve/
cp -r "$(ls -d "$out"/rep/*/ | tail -1)". benchmarks/results/fidelity_repeatability/
cp "$out/smi_idle.csv" benchmarks/results/fidelity_curve/
(cd benchmarks && python fidelity_tables.py)
echo "harness overhead tables: $out/harness_overhead_*.md (paste into BENCHMARKS.md)"
