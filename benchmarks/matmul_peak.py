"""The CPU's matrix-product speed on SmolLM2-135M's training shapes, float32 and bf16.

What bounds a CPU fit once the overheads are gone: a training step is mostly these products
(forward ``x W^T``, backward ``dY W`` and, for trained weights, ``dY^T x``), so their GFLOP/s
against a fit's FLOPs per token says how fast any trainer can go on this machine. Run it beside
``benchmarks/vs_trl.py`` on the same machine, e.g. under the simulated AVX2-only ISA:

    .venv/bin/python -m benchmarks.matmul_peak
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python -m benchmarks.matmul_peak --dtypes float32
"""

import argparse
import time

import torch

HIDDEN, INTERMEDIATE = 576, 1536  # SmolLM2-135M
# (rows of tokens, inner, outer) for forward, input gradient and weight gradient of the MLP and attention
SHAPES = [("x W^T (up)", "tokens", HIDDEN, INTERMEDIATE), ("dY W (up)", "tokens", INTERMEDIATE, HIDDEN),
          ("x W^T (q/o)", "tokens", HIDDEN, HIDDEN), ("dY^T x (up)", INTERMEDIATE, "tokens", HIDDEN)]


def gflops(rows: int, inner: int, outer: int, dtype: torch.dtype, repeats: int = 10) -> float:
    left, right = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, outer, dtype=dtype)
    for _ in range(3):
        left @ right
    start = time.perf_counter()
    for _ in range(repeats):
        left @ right
    return 2 * rows * inner * outer * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1444, 2048], help="rows x length of a micro-batch")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print("| product | tokens | " + " | ".join(f"{dtype} GFLOP/s" for dtype in args.dtypes) + " |")
    print("|---|---|" + "---|" * len(args.dtypes))
    for tokens in args.tokens:
        for name, *dims in SHAPES:
            rows, inner, outer = (tokens if dim == "tokens" else dim for dim in dims)
            speeds = [gflops(rows, inner, outer, getattr(torch, dtype)) for dtype in args.dtypes]
            print(f"| {name} | {tokens} | " + " | ".join(f"{speed:.0f}" for speed in speeds) + " |")


if __name__ == "__main__":
    main()
