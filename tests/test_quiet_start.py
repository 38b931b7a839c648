"""Starting the CLI prints no bitsandbytes warning about a 4-bit CPU kernel it cannot fetch (only
printed on CPUs with avx512_bf16; this project runs 4-bit weights on CUDA only)."""

import subprocess
import sys
from pathlib import Path


def test_importing_the_cli_and_bitsandbytes_prints_no_kernel_warning():
    result = subprocess.run([sys.executable, "-c", "import lightning_app.cli, peft, bitsandbytes"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    assert "gemm_4bit_forward" not in result.stderr + result.stdout
