#!/usr/bin/env bash
# Every CPU method config on SmolLM2-135M-Instruct (configs/smollm2_*.yaml), one epoch each over the
# bundled 400 records, then one `sft compare` table (peak memory, time per epoch, tokens/s, losses):
#   bash benchmarks/cpu_methods.sh [OUT_DIR]                 default OUT_DIR: benchmarks/cpu_methods
#   METHODS="lora prefix" bash benchmarks/cpu_methods.sh     a subset
# The same driver as the GPU table (benchmarks/compare_methods.py): each fit in its own process, so
# each peak memory figure is its own; runs go to runs/cpu_methods/; no checkpoint files and no
# merged export (training alone is measured). About 4 minutes per method on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/cpu_methods}
configs=()
for method in ${METHODS:-full_adamw full_sgd lora dora rslora adalora ia3 prefix prompt ptuning}; do
  configs+=("configs/smollm2_$method.yaml")
done
.venv/bin/python -m benchmarks.compare_methods --out "$out" --runs runs/cpu_methods --configs "${configs[@]}" \
  -- --merge.enabled false --checkpoint.save_top_k 0 --checkpoint.save_last false
