"""The CPU benchmark's loss column: the trained model's token-weighted loss over every trained token
of the records, the same for both sides (benchmarks/vs_trl.py)."""

import pytest
import torch

from benchmarks.vs_trl import loss_on_records
from datamodules.chat_tokens import tokenize_conversation
from datamodules.normalize import ConversationSpec, read_records
from modules.loading import load_causal_lm
from tests.factories import TYPED_RECORDS, write_jsonl


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
    assert loss_on_records(model, tokenizer, path, bf16=False, max_length=512) == pytest.approx(
        sum(losses) / len(losses), rel=1e-5)
