"""Training-step speed and memory of the embedded model on this machine (CPU or GPU).

Measures forward + backward of SmolLM2-135M-Instruct (LoRA r16 on all linear layers, or full
fine-tuning) on random token batches, float32 versus bf16 autocast, after one warm-up step:

    .venv/bin/python benchmarks/train_step_speed.py --method lora --batch 8 --lengths 160 480

Prints one Markdown row per (precision, length): seconds per step, tokens per second and the
process's peak resident memory (CPU) or peak allocated GPU memory.
"""

import argparse
import resource
import time

import torch
from peft import LoraConfig

from modules.loading import load_causal_lm
from modules.peft_setup import apply_peft


def peak_memory_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_seconds(model, input_ids: torch.Tensor, autocast_dtype) -> float:
    start = time.perf_counter()
    with torch.autocast(input_ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    if input_ids.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[160, 480])
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peft_config = LoraConfig(r=16, lora_alpha=32) if args.method == "lora" else None
    model = apply_peft(load_causal_lm("smollm2-135m-instruct"), peft_config).to(device).train()
    print("| method | precision | batch × length | s/step | tokens/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for precision, autocast_dtype in [("fp32", None), ("bf16-mixed", torch.bfloat16)]:
        for length in args.lengths:
            input_ids = torch.randint(0, 49000, (args.batch, length), device=device)
            step_seconds(model, input_ids, autocast_dtype)  # warm-up
            seconds = sum(step_seconds(model, input_ids, autocast_dtype) for _ in range(args.steps)) / args.steps
            print(f"| {args.method} | {precision} | {args.batch} × {length} | {seconds:.2f} | "
                  f"{args.batch * length / seconds:.0f} | {peak_memory_mib(device):.0f} |", flush=True)


if __name__ == "__main__":
    main()
