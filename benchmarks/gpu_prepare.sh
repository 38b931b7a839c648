#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_compare.sh needs on the GPU machine, and print the
# device call that runs it. From the project root:
#   bash benchmarks/gpu_prepare.sh
# 1. the tokenizer files of benchmarks/architectures/qwen3-0.6b (SmolLM2-135M-Instruct's, fetched
#    once with the embedded model) — git-ignored, carried;
# 2. .whl: the wheels the GPU image lacks or holds in other versions (it has torch, lightning,
#    accelerate, torchmetrics, tensorboard, matplotlib, pytest; the versions are this project's pins);
# 3. the size check: one device call carries at most 64 MiB (working tree + carried paths).
set -euo pipefail
cd "$(dirname "$0")/.."
architecture=benchmarks/architectures/qwen3-0.6b
limit=$((64 * 1024 * 1024))

[ -x .venv/bin/python ] || make venv
.venv/bin/python benchmarks/prepare_architecture.py "$architecture"

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
rm -rf .whl && mkdir .whl  # one version of each package: two would stop the install there
wheels=(transformers==5.23.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
        jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.14.0 bitsandbytes==0.50.2
        math-verify==0.9.0 latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2 gguf==0.19.0)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${wheels[@]}"

bytes() { du -cb "$@" | tail -1 | cut -f1; }
# what travels besides the carried paths: tracked files and untracked ones git does not ignore
tree=$(git ls-files -z --cached --others --exclude-standard |
       { du -cb --files0-from=- 2>/dev/null || true; } | tail -1 | cut -f1)
wheels_size=$(bytes .whl)
tokenizer_size=$(bytes "$architecture")
total=$((tree + wheels_size + tokenizer_size))
mib() { echo "$(($1 / 1024 / 1024)).$(($1 * 10 / 1024 / 1024 % 10)) MiB"; }
echo "carry: working tree $(mib "$tree") + .whl $(mib "$wheels_size") + $architecture $(mib "$tokenizer_size")" \
     "= $(mib "$total") of 64 MiB"
if [ "$total" -le "$limit" ]; then
  cat <<MSG
One device call (the method table, about 5 minutes, then the side by side with TRL until 540 s; GPU_TESTS=1
adds the gpu-marked tests, about 2 minutes taken from the side by side; a second call with VS_TRL=only
measures only the side by side):
  run(command="GPU_TESTS=1 bash benchmarks/gpu_compare.sh", carry=[".whl", "$architecture"], timeout_s=600)
MSG
else
  cat <<MSG
Over the limit: two calls in a row (the machine keeps /tmp for ~30 s after a call):
  run(command="bash benchmarks/gpu_compare.sh --install-only", carry=[".whl"], timeout_s=300)
  run(command="GPU_TESTS=1 bash benchmarks/gpu_compare.sh", carry=["$architecture"], timeout_s=600)
MSG
fi
cat <<MSG
Then, here: copy comparison.md and loss_curves.png from the call's files into benchmarks/gpu_table/,
unpack runs.tar.gz beside them if the runs are wanted, and fill in benchmarks/RESULTS.md "GPU table";
vs_trl_gpu.md (and vs_trl_gpu.json) into benchmarks/vs_trl/ for the side by side with TRL.
MSG
