"""Training-step speed and memory of the embedded model on this machine (CPU or GPU).

Measures forward + backward of SmolLM2-135M-Instruct (LoRA r16 on all linear layers, or full
fine-tuning) on random token batches, float32 versus bf16 autocast, after one warm-up step:

    .venv/bin/python benchmarks/train_step_speed.py --method lora --batch 8 --lengths 160 480

The last ``--trained-share`` of each sequence is the trained answer. ``--loss full`` computes the
logits of every position (transformers' default); ``--loss kept`` only at the trained positions,
as the heads do (modules/heads/kept_logits.py). Prints one Markdown row per (precision, length):
seconds per step, tokens per second and the process's peak resident memory (CPU) or peak
allocated GPU memory. The CPU peak cannot be reset, so compare ``--loss`` settings in separate runs.
"""

import argparse
import resource
import time

import torch
from peft import LoraConfig

from core.constants import IGNORE_INDEX
from modules.backbone.loading import load_causal_lm
from modules.heads.kept_logits import forward_keeping, next_token_labels
from modules.peft.wrapping import apply_peft


def peak_memory_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def answer_only_batch(batch_size: int, length: int, trained_share: float, device: str) -> dict:
    """Random tokens; the last ``trained_share`` of every row is labelled (the "answer")."""
    input_ids = torch.randint(0, 49000, (batch_size, length), device=device)
    labels = input_ids.clone()
    labels[:, : length - max(1, round(length * trained_share))] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def loss_of(model, batch: dict, loss: str) -> torch.Tensor:
    if loss == "full":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    targets = next_token_labels(batch["labels"])
    return forward_keeping(model, batch, targets != IGNORE_INDEX, targets).loss


def step_seconds(model, batch: dict, loss: str, autocast_dtype) -> float:
    start = time.perf_counter()
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        value = loss_of(model, batch, loss)
    value.backward()
    if device_type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[160, 480])
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--trained-share", type=float, default=1.0, help="labelled share of each sequence")
    parser.add_argument("--loss", choices=["full", "kept"], default="full", help="logits of all or trained positions")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16-mixed"], default=["fp32", "bf16-mixed"])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peft_config = LoraConfig(r=16, lora_alpha=32) if args.method == "lora" else None
    model = apply_peft(load_causal_lm("smollm2-135m-instruct"), peft_config).to(device).train()
    print("| method | loss | trained share | precision | batch × length | s/step | tokens/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        autocast_dtype = torch.bfloat16 if precision == "bf16-mixed" else None
        for length in args.lengths:
            batch = answer_only_batch(args.batch, length, args.trained_share, device)
            step_seconds(model, batch, args.loss, autocast_dtype)  # warm-up
            seconds = sum(step_seconds(model, batch, args.loss, autocast_dtype) for _ in range(args.steps)) / args.steps
            print(f"| {args.method} | {args.loss} | {args.trained_share:g} | {precision} | {args.batch} × {length} | "
                  f"{seconds:.2f} | {args.batch * length / seconds:.0f} | {peak_memory_mib(device):.0f} |", flush=True)

if __name__ == "__main__":
    main()
