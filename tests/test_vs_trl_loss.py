"""The CPU benchmark's table (benchmarks/vs_trl.py): the trained model's token-weighted loss over every
trained token of the records, the same for both sides, and the median of repeated runs."""

from types import SimpleNamespace

import pytest
import torch

from benchmarks.vs_trl import loss_on_records, median_run, table
from datamodules.chat_tokens import tokenize_conversation
from datamodules.normalize import ConversationSpec, read_records
from modules.backbone.loading import load_causal_lm
from tests.factories import TYPED_RECORDS, write_jsonl
from tests.tolerances import reordering_bound


def test_loss_on_records_weights_every_trained_token_alike(tiny_model_dir, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS)
    model = load_causal_lm(str(tiny_model_dir))
    losses = []
    with torch.no_grad():
        for record in read_records(path, ConversationSpec("typed")):
            tokens = tokenize_conversation(tokenizer, record.messages)
            logits = model(input_ids=torch.tensor([tokens["input_ids"]])).logits[0, :-1]
            for position, label in enumerate(tokens["labels"][1:]):
                if label != -100:
                    losses.append(float(torch.nn.functional.cross_entropy(logits[position], torch.tensor(label))))
    assert len(losses) > 2 * len(TYPED_RECORDS)  # records of different lengths: a per-record mean would differ
    # the same logits, summed in another order: one pass's reordering (tests/tolerances.py, rule 2)
    assert loss_on_records(model, tokenizer, path, bf16=False, max_length=512) == pytest.approx(
        sum(losses) / len(losses), rel=reordering_bound(torch.float32))


def test_the_table_shows_each_sides_median_run_and_every_runs_speed():
    def run(side, seconds):
        return {"side": side, "seconds": seconds, "real_tokens": 1000.0, "peak_mib": seconds, "trained_loss": 0.5,
                "precision": "32-true"}
    trl = median_run([run("TRL", 10.0), run("TRL", 8.0), run("TRL", 12.0)])
    ours = median_run([run("ours", 2.0), run("ours", 4.0), run("ours", 2.5)])
    assert trl["seconds"] == 10.0 and ours["seconds"] == 2.5  # 100 and 400 tokens/s: the middle runs
    args = SimpleNamespace(method="lora", records=3, batch=1, accumulate=1, max_length=8, lr=0.1, model="m", repeats=3,
                           ours_args=[])
    text = table([trl, ours], args)
    assert "| ours / TRL | | 4.00x | 0.25x | |" in text
    assert "TRL: 100.0, 125.0, 83.3; ours: 500.0, 250.0, 400.0" in text
    assert "ours the same steps, split by length (the default)" in text
