#!/usr/bin/env bash
# Issue 4's GPU table, on the lent GPU machine (prepare here first: bash benchmarks/gpu_prepare.sh).
#   bash benchmarks/gpu_compare.sh [OUT_DIR [FIT_OPTION ...]]   OUT_DIR: default $OUT, else runs/gpu_table/out;
#                                                    FIT_OPTIONs go to every fit (--data.batch_size 16)
#   GPU_TESTS=1 bash benchmarks/gpu_compare.sh        also runs the gpu-marked tests first
#   METHODS="lora qlora" bash benchmarks/gpu_compare.sh   a subset (default: all four)
#   VS_TRL=0 | VS_TRL=only                           skip, or run only, the side by side with TRL
#                                                    (VS_TRL_METHODS: its methods, most wanted first)
#   bash benchmarks/gpu_compare.sh --install-only     only the wheels (when they must travel alone)
#   REQUIRE_GPU=0 PYTHON=.venv/bin/python bash benchmarks/gpu_compare.sh OUT --trainer.accelerator cpu ...
#                                                    a CPU dry run of the plumbing (QLoRA then fails)
# Steps: install the carried wheels (.whl) into /tmp/site unless that set is installed there already
# (/tmp outlives a call while the machine stays warm); check the GPU and the architecture folder;
# optionally pytest -m gpu; fit full AdamW, full SGD, LoRA and QLoRA (benchmarks/gpu/*.yaml), each
# in its own process; `sft compare` them; then benchmarks/vs_trl_gpu.py: ours vs TRL's SFTTrainer
# on the same recipe, each method TRL padded, TRL packed and ours, each in its own process; it
# starts no run after VS_TRL_DEADLINE (default 540) seconds from this script's start and lists
# those left out. Into OUT_DIR: comparison.md, loss_curves.png, runs.tar.gz (summaries, configs,
# TensorBoard events), vs_trl_gpu.md, vs_trl_gpu.json, vs_trl_gpu_logs/, gpu_compare.log and,
# with GPU_TESTS=1, pytest_gpu.log. The method table takes about 3-5 minutes on an H100 (four
# model builds, 50 steps each); the side by side about 30-45 s a run, 11 runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

install_wheels() {
  local marker=/tmp/site/.lightning-sft-wheels
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    [ -f "$marker" ] && { echo "wheels: none carried; using those installed earlier in /tmp/site"; return; }
    echo "wheels: no .whl folder and nothing in /tmp/site; using the image's packages as they are"
    return
  fi
  if [ -f "$marker" ] && [ "$(ls .whl)" = "$(cat "$marker")" ]; then
    echo "wheels: already installed in /tmp/site"
    return
  fi
  echo "wheels: installing $(ls .whl/*.whl | wc -l) into /tmp/site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  ls .whl > "$marker"
}

main() {
  date -u
  install_wheels
  export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # no network there: fail at once rather than time out
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if [ "${REQUIRE_GPU:-1}" = 1 ]; then
    "$PYTHON" -c 'import sys, torch; torch.cuda.is_available() or sys.exit("no CUDA GPU: this is for the GPU machine")'
  fi
  if [ "${GPU_TESTS:-0}" = 1 ]; then
    # A failing GPU test is reported, and the table is still measured.
    "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$out/pytest_gpu.log" || true
  fi
  local status=0
  if [ "${VS_TRL:-1}" != only ]; then
    # shellcheck disable=SC2086  # METHODS is a list of words
    "$PYTHON" -m benchmarks.compare_methods --out "$out" --methods ${METHODS:-full_adamw full_sgd lora qlora} -- "$@" ||
      status=$?
  fi
  if [ "${VS_TRL:-1}" != 0 ]; then
    # Issue 8: ours vs TRL's SFTTrainer (vs_trl_gpu.md); no run starts past VS_TRL_DEADLINE s from the start.
    local dry_run=()
    [ "${REQUIRE_GPU:-1}" = 1 ] || dry_run=(--dry-run-cpu)
    # shellcheck disable=SC2086  # VS_TRL_METHODS is a list of words
    "$PYTHON" -m benchmarks.vs_trl_gpu --out "$out" --deadline-s $((${VS_TRL_DEADLINE:-540} - SECONDS)) \
      --methods ${VS_TRL_METHODS:-full_adamw lora qlora full_sgd} "${dry_run[@]}" || status=$?
  fi
  return "$status"
}

if [ "${1:-}" = --install-only ]; then
  install_wheels
  exit
fi
out=${1:-${OUT:-runs/gpu_table/out}}
shift || true
mkdir -p "$out"
main "$@" 2>&1 | tee "$out/gpu_compare.log"
