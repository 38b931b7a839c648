"""Generated tokens per second of ``sft predict``'s answering path against one-prompt-at-a-time HF ``generate``.

Same machine, same run, same records (the bundled test records, rendered by the data module as
``sft predict`` renders them), same model (SmolLM2-135M-Instruct, float32), greedy decoding to at
most ``--max-new-tokens``:

    .venv/bin/python -m benchmarks.predict_speed --out benchmarks/predict/cpu.md
    .venv/bin/python -m benchmarks.predict_speed --records 400 --max-new-tokens 256 --reference-every 5

(a) ``model.generate`` on one unpadded prompt at a time; (b) ``trainer.predict`` over the data module's predict batches
(``data.answer_batch_size`` prompts generated with the same settings, longest first, ``model.answer_rows``
of them decoding at once and the rest joining as rows finish), what ``sft predict`` runs. Prints one
Markdown table: generated tokens (EOS included), seconds, tokens/s, the ratio ours / one-by-one,
and how many answers are the same token ids on both sides. On a shared machine only the ratio means
much: both sides run in the same minutes.

One-by-one ``generate`` costs about a minute per 1,000 tokens on 2 CPU cores, so for hundreds of
prompts ``--reference-every K`` runs it on every K-th prompt only: its tokens/s on that systematic
sample is the reference rate, and those answers are the ones compared token for token.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_TEST = PROJECT_ROOT / "data" / "bundled" / "test.jsonl"
BUNDLED_TRAIN = PROJECT_ROOT / "data" / "bundled" / "train.jsonl"


def one_by_one(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Plain ``generate`` per prompt: no padding, no batching."""
    answers = []
    for prompt in prompts:
        input_ids = torch.tensor([prompt])
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
        answers.append(output[0, len(prompt):].tolist())
    return answers


def recording_decode(recorded: dict):
    """``modules.generation.plan``'s decode, also keeping each prompt's new token ids (to compare them)."""
    import modules.generation.plan as generation

    decode = generation.decode

    def record(model, input_ids, attention_mask, *args, **kwargs):
        new_tokens = decode(model, input_ids, attention_mask, *args, **kwargs)
        for ids, mask, tokens in zip(input_ids.tolist(), attention_mask.tolist(), new_tokens):
            recorded[tuple(i for i, m in zip(ids, mask) if m)] = tokens
        return new_tokens

    generation.decode = record


def ours(module, datamodule) -> float:
    """Seconds of ``trainer.predict``, what ``sft predict`` runs (answers kept in memory, not written)."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    start = time.perf_counter()
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    return time.perf_counter() - start


def table(rows: list[tuple], identical: int, total: int) -> str:
    lines = ["| path | generated tokens | seconds | tokens/s | ratio to one-by-one | identical answers |",
             "|---|---|---|---|---|---|"]
    base_speed = rows[0][1] / rows[0][2]
    for name, tokens, seconds in rows:
        same = "(reference)" if name.startswith("HF") else f"{identical}/{total}"
        lines.append(f"| {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} | "
                     f"{tokens / seconds / base_speed:.2f}x | {same} |")
    return "\n".join(lines)


def main() -> None:
    from datamodules.sft_datamodule import SFTDataModule
    from modules.generation.plan import GenerationSettings
    from modules.sft_module import SFTModule

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--answer-batch-size", type=int, default=256)
    parser.add_argument("--answer-rows", type=int, default=64)
    parser.add_argument("--reference-every", type=int, default=1,
                        help="run one-by-one generate on every K-th prompt only (its rate is the reference)")
    parser.add_argument("--records", type=int, default=40,
                        help="the first N bundled records: the 40 test records, then training records")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = Path(__import__("tempfile").mkdtemp())
    records = folder / "predict.jsonl"
    lines = [line for path in (BUNDLED_TEST, BUNDLED_TRAIN) for line in path.read_text(encoding="utf-8").splitlines()]
    records.write_text("\n".join(lines[: args.records]) + "\n")  # more than the 40 test records: training prompts
    datamodule = SFTDataModule(predict_path=str(records), format="typed", tokenizer_name_or_path=args.model,
                               answer_batch_size=args.answer_batch_size)
    datamodule.setup("predict")
    prompts = [list(ids) for ids in datamodule.prompt_examples("predict")["prompt_ids"]]
    module = SFTModule(model_name_or_path=args.model, generation_per_type={}, answer_rows=args.answer_rows,
                       generation=GenerationSettings(max_new_tokens=args.max_new_tokens))
    module.configure_model()
    module.eval()
    tokenizer = datamodule.tokenizer

    recorded: dict = {}
    recording_decode(recorded)
    with torch.no_grad():
        start = time.perf_counter()
        sampled = prompts[:: args.reference_every]
        reference = one_by_one(module.model, tokenizer, sampled, args.max_new_tokens)
        reference_seconds = time.perf_counter() - start
        recorded.clear()
        our_seconds = ours(module, datamodule)
    answers = [recorded[tuple(prompt)] for prompt in prompts]
    identical = sum(ours_ == theirs for ours_, theirs in zip(answers[:: args.reference_every], reference))
    sample_note = f", on every {args.reference_every}th prompt ({len(sampled)})" if args.reference_every > 1 else ""
    rows = [(f"HF generate, one prompt at a time{sample_note}", sum(map(len, reference)), reference_seconds),
            (f"sft predict path (answer_batch_size {args.answer_batch_size}, answer_rows {args.answer_rows})",
             sum(map(len, answers)), our_seconds)]
    text = (f"{len(prompts)} bundled prompts, {args.model}, float32, greedy, max_new_tokens "
            f"{args.max_new_tokens}, {torch.get_num_threads()} threads\n\n" + table(rows, identical, len(sampled)))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join([".venv/bin/python -m benchmarks.predict_speed", *sys.argv[1:]])
        args.out.write_text(f"`{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
