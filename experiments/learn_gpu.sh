#!/usr/bin/env bash
# The learning run on one accelerator (an H200 lease: 15 minutes of device time, 10 per command):
# the learning suite at the gpu preset (run.py's default run on MJX with 1,024 envs), NIL's
# reward and the pose oracle, 3 seeds each trained together, into $OUT (default benchmarks/gpu;
# commit it under benchmarks/h200/). Each case's results are written as soon as it ends, so a
# command cut short by its time limit still returns the cases it finished.
# Needs nil-jax installed with the gpu extra (pip install -e ".[gpu]").
#   bash experiments/learn_gpu.sh                      # on the accelerator
# Arguments are passed on to the suite, after (so overriding) the ones below. Its CPU twin, the
# same script with MJX on a CPU at tiny sizes on a short reference, is a test:
# tests/test_learning_benchmark.py::test_learn_gpu_script_runs_its_cpu_twin.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/gpu}"
mkdir -p "$out"
python experiments/benchmark.py --suite learning --learning-preset gpu \
  --learning-cases nil pose --learning-seeds 3 --learning-env-steps 1500000 \
  --learning-eval-every 250000 --out-dir "$out" "$@" 2>&1 | tee "$out/learning_log.txt"
