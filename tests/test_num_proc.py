"""Tokenizing on several processes gives the tokens of one, in the same order, and without a
terminal says its progress in a few lines rather than a redrawn bar."""

import logging

import pytest

import datamodules.parallel_map as parallel_map
from datamodules.sft_datamodule import SFTDataModule
from tests.factories import write_jsonl

COLUMNS = ("input_ids", "labels", "id", "row_index", "record_type", "choice_label", "answer_position", "n_trained")


def _records(count: int) -> list[dict]:
    """Plain and choice records of different lengths, so that a reordering or a shifted shard shows."""
    records = []
    for index in range(count):
        if index % 3 == 2:
            records.append({"id": f"c{index}", "type": "choice", "prompt": f"Pick {index}.",
                            "choices": {"A": "x" * (index % 5 + 1), "B": "y"}, "answer": "AB"[index % 2]})
        else:
            records.append({"id": f"g{index}", "type": "generic-generate", "prompt": "Say " + "hi " * (index % 7),
                            "answer": "ok " * (index % 4 + 1)})
    return records


def _prepared(model_dir, path, num_proc: int) -> SFTDataModule:
    datamodule = SFTDataModule(train_path=path, predict_path=path, tokenizer_name_or_path=str(model_dir),
                               cache_tokens=False, num_proc=num_proc)
    datamodule.training_examples("train")
    datamodule.prompt_examples("predict")
    return datamodule


@pytest.mark.parametrize("without_terminal_pieces", [False, True])
def test_two_processes_give_the_tokens_of_one(tiny_model_dir, tmp_path, monkeypatch, caplog,
                                              without_terminal_pieces):
    path = write_jsonl(tmp_path / "train.jsonl", _records(23))
    if without_terminal_pieces:  # the log-file path: one process in pieces, a line after each
        monkeypatch.setattr(parallel_map, "SMALL_SPLIT", 5)
        monkeypatch.setattr(parallel_map, "LOG_LINES", 4)
    with caplog.at_level(logging.INFO):
        one = _prepared(tiny_model_dir, path, num_proc=1)
    one_lines = [record.message for record in caplog.records if "of 23 records" in record.message]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        two = _prepared(tiny_model_dir, path, num_proc=2)
    for name in COLUMNS:
        assert two.examples["train"][name] == one.examples["train"][name], name
    assert two.examples["predict"]["prompt_ids"] == one.examples["predict"]["prompt_ids"]
    assert two.examples["predict"]["id"] == one.examples["predict"]["id"]
    assert two.token_stats["train"] == one.token_stats["train"]
    assert one.examples["train"]["id"][:3] == ["g0", "g1", "c2"]
    two_lines = [record.message for record in caplog.records if record.message.startswith(("Tokenizing", "Rendering"))]
    if without_terminal_pieces:  # 23 rows in pieces of 6: four lines each for training and prompts
        assert len(one_lines) == 8 and one_lines[3].startswith("Tokenizing") and "23 of 23 records" in one_lines[3]
        assert len(two_lines) == 4 and "23 records on 2 processes" in two_lines[0]  # a start and an end each
    else:
        assert one_lines == [] and two_lines == []


def test_the_default_is_one_process_for_a_small_split(monkeypatch):
    monkeypatch.setattr(parallel_map, "usable_cores", lambda: 8)
    assert parallel_map.resolve_num_proc(None, 9_999) == 1
    assert parallel_map.resolve_num_proc(None, 10_000) == 8
    assert parallel_map.resolve_num_proc(2, 50) == 2


def test_zero_processes_is_refused():
    with pytest.raises(ValueError, match="data.num_proc must be at least 1"):
        SFTDataModule(num_proc=0)
