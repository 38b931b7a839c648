"""``sft inspect``: see exactly which tokens training will learn, before spending GPU hours.

Trained tokens are shown between ``⟦`` and ``⟧``; the dump holds the very ``input_ids`` and
``labels`` the training dataloader uses, one JSON object per example.
"""

import json
from pathlib import Path

from core.constants import IGNORE_INDEX
from core.errors import RecordError
from core.files import write_text_atomically
from datamodules.mixing import source_spec
from datamodules.normalize import record_errors
from datamodules.record_loading import load_records

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def _runs(input_ids: list[int], labels: list[int]):
    """Consecutive (trained?, ids) runs of an example."""
    runs: list[tuple[bool, list[int]]] = []
    for token_id, label in zip(input_ids, labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token_id)
        else:
            runs.append((trained, [token_id]))
    return runs


def marked_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The rendered example with every trained span wrapped in ⟦…⟧."""
    parts = []
    for trained, ids in _runs(input_ids, labels):
        text = tokenizer.decode(ids)
        parts.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text)
    return "".join(parts)


def dump_examples(tokenizer, examples, path: str) -> None:
    """One JSON object per example: ``input_ids``, ``labels`` and the rendered ``text``."""
    lines = [
        json.dumps({"input_ids": list(example["input_ids"]), "labels": list(example["labels"]),
                    "text": tokenizer.decode(example["input_ids"])}, ensure_ascii=False)
        for example in examples
    ]
    write_text_atomically(Path(path), "\n".join(lines) + "\n")


def inspect_split(datamodule, split: str, show: int, dump: str | None) -> None:
    examples = datamodule.training_examples(split)
    for position in range(min(show, len(examples))):
        example = examples[position]
        print(f"--- example {position} ({len(example['input_ids'])} tokens, {example['n_trained']} trained) ---")
        print(marked_text(datamodule.tokenizer, example["input_ids"], example["labels"]))
    if dump:
        dump_examples(datamodule.tokenizer, examples, dump)
        print(f"wrote {len(examples)} examples to {dump}")


def split_errors(datamodule, split: str, limit: int) -> list[RecordError]:
    """Every bad record of the split's file(s), at most ``limit`` in all (each file of a mixture checked
    with its own format and renames). None, without reading a record, for a file whose tokens are in
    the cache: they were made from these very bytes, read with the same spec, after its check."""
    if datamodule.split_keys.cached(split):
        return []
    if split == "train" and datamodule.train_sources is not None:
        files = [(source.path, source_spec(source, datamodule.spec)) for source in datamodule.train_sources]
    else:
        files = [(datamodule.split_path(split), datamodule.spec)]
    errors: list[RecordError] = []
    for path, spec in files:
        errors += record_errors(load_records(path), spec, path, limit - len(errors))
        if len(errors) >= limit:
            break
    return errors
