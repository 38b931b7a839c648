"""``make test``'s second pass: the numerical tests again on AVX2 kernels, where this CPU has more.

The suite's tolerances come from the arithmetic (tests/tolerances.py), but a bound is only ever
checked on the kernels that ran, and CPUs of the same kind differ: an AVX512 machine and an AVX2-only
laptop round the same float32 matmul differently. PyTorch picks its CPU kernels by
``ATEN_CPU_CAPABILITY`` and oneDNN by ``ONEDNN_MAX_CPU_ISA``, so a machine with AVX512 can run what an
AVX2-only one runs: the tests marked ``numerics`` (they compare numbers of two computations) run once
more that way. On an AVX2 or ARM machine the first pass already ran the narrower kernels.

    .venv/bin/python -m tests.other_cpu            # what `make test` runs after the suite
    .venv/bin/python -m tests.other_cpu -x -k pack  # more pytest options
"""

import os
import subprocess
import sys

import torch

AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def has_more_than_avx2(capability: str) -> bool:
    """Only the AVX512 kernel families have more than AVX2 (ARM's are their own).

    >>> [has_more_than_avx2(c) for c in ("AVX512", "AVX2", "DEFAULT", "SVE256")]
    [True, False, False, False]
    """
    return capability.startswith("AVX512")


def main(pytest_options: list[str]) -> int:
    capability = torch.backends.cpu.get_cpu_capability()
    if not has_more_than_avx2(capability):
        print(f"numerical tests on AVX2 kernels: not run again, this CPU's kernels are {capability} already")
        return 0
    print(f"numerical tests again on AVX2 kernels (this CPU: {capability}): {' '.join(f'{k}={v}' for k, v in AVX2_KERNELS.items())}",
          flush=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "numerics", *pytest_options]
    return subprocess.call(command, env={**os.environ, **AVX2_KERNELS})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
