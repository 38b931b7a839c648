"""The Trainer's precision, chosen for the machine that runs it.

bf16-mixed (fp32 weights, bf16 matmuls) is the fast choice only where the hardware multiplies bf16:
on a CPU without bf16 instructions a bf16 matmul falls back to a slow kernel, measured at 0.3 GFLOP/s
against 105 GFLOP/s in fp32 on an AVX2 CPU, so a fit that takes minutes in fp32 never ends. The
choice is asymmetric on purpose: a wrong 32-true costs at most the ~2-3x that bf16 would have saved,
a wrong bf16-mixed costs ~300x. So bf16 is chosen only where the machine clearly has it.

``probe_kind`` and ``probe`` ask torch (tests monkeypatch ``probe``); ``device_kind``,
``choose_precision`` and ``precision_warning`` (for a precision the user set) decide from plain values.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch

# Instructions that multiply bf16 natively, by the names torch.cpu.get_capabilities() uses (x86, ARM).
BF16_INSTRUCTIONS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
MEASURED_SLOWDOWN = "measured on an AVX2 CPU: 0.3 GFLOP/s for a bf16 matmul against 105 GFLOP/s in fp32"


@dataclass(frozen=True)
class Capabilities:
    """What torch says about the device that will run; ``probe`` fills it, tests write it by hand."""

    cpu_isa: str = ""  # torch.backends.cpu.get_cpu_capability(): 'AVX2', 'AVX512', 'DEFAULT' (ARM), ...
    onednn_bf16: bool = False  # bf16 matmuls take oneDNN's kernels, not the slow fallback
    bf16_instructions: tuple[str, ...] = ()  # from BF16_INSTRUCTIONS: what this CPU has
    cuda_bf16: bool = False  # compute capability 8.0+ (Ampere) or ROCm; emulated bf16 does not count


class Choice(NamedTuple):
    precision: str
    reason: str

    def line(self) -> str:
        return f"precision: {self.precision} ({self.reason})"


def probe(kind: str) -> Capabilities:
    """Ask torch about the CPU, and about the GPU only when it will run: asking initializes CUDA,
    which fork-started processes refuse (strategy ddp_fork, ddp_notebook: set trainer.precision)."""
    cuda_bf16 = kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    features = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "amx_bf16": torch.cpu._is_amx_tile_supported()}
    return Capabilities(
        cpu_isa=torch.backends.cpu.get_cpu_capability(),
        onednn_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        bf16_instructions=tuple(name for name in BF16_INSTRUCTIONS if features.get(name)),
        cuda_bf16=cuda_bf16,
    )


def probe_kind(accelerator) -> str:
    """``device_kind`` on this machine; device_count asks NVML, so CUDA stays uninitialized."""
    return device_kind(accelerator, torch.cuda.device_count() > 0, torch.backends.mps.is_available())


def device_kind(accelerator, cuda_available: bool, mps_available: bool = False) -> str:
    """'cuda', 'cpu' or 'other' (MPS, TPU, an Accelerator object): where ``trainer.accelerator`` runs.

    'auto' and 'gpu' follow Lightning's order, MPS before CUDA; TPUs are left out as rare here.
    """
    name = accelerator.lower() if isinstance(accelerator, str) else ""
    if name == "cpu" or (name == "auto" and not (cuda_available or mps_available)):
        return "cpu"
    if name in ("cuda", "gpu", "auto") and cuda_available and not mps_available:
        return "cuda"
    return "other"


def cpu_has_bf16(capabilities: Capabilities) -> bool:
    """Both are needed: without oneDNN's bf16 kernels matmuls take the slow fallback, and without
    bf16 instructions oneDNN emulates bf16 with fp32 ones (AVX512 alone): no faster than 32-true."""
    return capabilities.onednn_bf16 and bool(capabilities.bf16_instructions)


def cpu_without_bf16(capabilities: Capabilities) -> str:
    """Why this CPU does not qualify, in the words the user sees."""
    if capabilities.bf16_instructions:  # a torch built without oneDNN's bf16 kernels
        return f"torch has no oneDNN bf16 kernels for this CPU: {capabilities.cpu_isa}"
    return f"this CPU has no bf16 instructions: {capabilities.cpu_isa}"


def choose_precision(kind: str, capabilities: Capabilities) -> Choice:
    """The precision for a device of this kind (see ``device_kind``), and why, for the user to read."""
    if kind == "cuda":
        if capabilities.cuda_bf16:
            return Choice("bf16-mixed", "this GPU supports bf16")
        return Choice("16-mixed", "this GPU has no bf16: compute capability below 8.0")
    if kind == "cpu":
        if cpu_has_bf16(capabilities):
            return Choice("bf16-mixed", f"this CPU has bf16 instructions: {', '.join(capabilities.bf16_instructions)}")
        return Choice("32-true", cpu_without_bf16(capabilities))
    return Choice("32-true", "Lightning's default; bf16 is chosen only for CUDA GPUs and CPUs")


def precision_warning(precision, kind: str, capabilities: Capabilities) -> str | None:
    """A warning when the configured precision is bf16 on a CPU without bf16; None when it is fine."""
    if kind != "cpu" or not str(precision).startswith("bf16") or cpu_has_bf16(capabilities):
        return None
    if capabilities.onednn_bf16:  # emulated: slow only in that it is no faster
        cost = "oneDNN emulates bf16 with fp32 instructions: no faster than 32-true, and less exact"
    else:
        cost = f"bf16 matmuls fall back to a kernel ~300x slower than fp32 ({MEASURED_SLOWDOWN}); a fit may never end"
    return (
        f"trainer.precision is {precision}, but {cpu_without_bf16(capabilities)}. {cost}. "
        "Remove trainer.precision from the config to let sft choose (32-true here), "
        "or set --trainer.precision 32-true."
    )
