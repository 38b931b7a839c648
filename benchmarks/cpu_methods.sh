#!/usr/bin/env bash
# Every CPU method config on SmolLM2-135M-Instruct (configs/smollm2_*.yaml), one epoch each over the
# bundled 400 records, then one `sft compare` table (peak memory, time per epoch, tokens/s, losses):
#   bash benchmarks/cpu_methods.sh [OUT_DIR]                 default OUT_DIR: benchmarks/cpu_methods
#   METHODS="lora prefix" bash benchmarks/cpu_methods.sh     a subset
# Runs go to runs/cpu_methods/; no checkpoint files and no merged export (training alone is measured).
# Each fit is its own process, so each peak memory figure is its own. About 4 minutes per method on
# 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/cpu_methods}
methods=${METHODS:-full_adamw full_sgd lora dora rslora adalora ia3 prefix prompt ptuning}
runs=()
for method in $methods; do
  .venv/bin/sft fit --config "configs/smollm2_$method.yaml" --trainer.logger.init_args.save_dir runs/cpu_methods \
    --merge.enabled false --checkpoint.save_top_k 0 --checkpoint.save_last false
  runs+=("$(ls -d "runs/cpu_methods/smollm2_$method"/version_* | sort -V | tail -1)")
done
.venv/bin/sft compare "${runs[@]}" --out "$out"
