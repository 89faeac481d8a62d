#!/usr/bin/env bash
# The GPU benchmark: what benchmarks/h200/ holds (one NVIDIA H200, about 7 minutes).
# Needs nil-jax installed with the gpu extra (pip install -e ".[gpu]") and the H1 model in the
# robot cache. The encoder runs in bf16 on the accelerator; mujoco.Renderer and HF PyTorch are
# CPU baselines and are not run here.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/gpu}"
python experiments/benchmark.py --suite timesformer renderer agent --embodiments h1 \
  --batch-sizes 1 256 4096 --no-renderer-baseline --render-memory-gib 16 \
  --encoder-configs base small --clip-batch-sizes 1 16 --rounds 3 --no-hf \
  --bf16-error-configs --update-batch-sizes 128 1024 4096 --agent-envs 1 4096 --out-dir "$out"
