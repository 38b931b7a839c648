"""The token cache: a second run over the same data reads the tokens back instead of tokenising,
and any change to what the tokens depend on (a record, an option, the chat template) misses."""

import os
from pathlib import Path

import datasets
import pytest

import datamodules.sft_datamodule as sft_datamodule
from datamodules.sft_datamodule import SFTDataModule
from datamodules.token_cache import cached_split
from tests.factories import write_jsonl

RECORDS = [
    {"id": "a", "type": "generic-generate", "prompt": "Say hi.", "answer": "hi"},
    {"id": "b", "type": "choice", "prompt": "Pick one.", "choices": {"A": "x", "B": "y"}, "answer": "B"},
]


def _datamodule(model_dir, path, **kwargs) -> SFTDataModule:
    return SFTDataModule(train_path=path, predict_path=path, format="typed", tokenizer_name_or_path=str(model_dir),
                         **kwargs)


def _columns(dataset) -> dict:
    return {name: dataset[name] for name in dataset.column_names}


def _split_folders(cache_root) -> list[str]:
    """The stored splits (``values`` holds the training data's fingerprints)."""
    return sorted(set(os.listdir(cache_root)) - {"values"})


@pytest.fixture
def count_builds(monkeypatch):
    """How many times each split kind was really tokenised."""
    calls = {"training": 0, "prompts": 0}

    def counting(name, kind):
        real = getattr(sft_datamodule, name)

        def wrapper(*args, **kwargs):
            calls[kind] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(sft_datamodule, name, wrapper)
    counting("build_training_examples", "training")
    counting("build_prompt_examples", "prompts")
    return calls


def test_second_run_reads_the_same_tokens_back(tiny_model_dir, tmp_path, count_builds):
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    first = _datamodule(tiny_model_dir, path)
    first_examples, first_prompts = first.training_examples("train"), first.prompt_examples("predict")
    second = _datamodule(tiny_model_dir, path)
    second_examples, second_prompts = second.training_examples("train"), second.prompt_examples("predict")
    assert count_builds == {"training": 1, "prompts": 1}
    assert _columns(second_examples) == _columns(first_examples)
    assert _columns(second_prompts) == _columns(first_prompts)
    assert second.token_stats["train"] == first.token_stats["train"]
    assert second_examples["labels"][0][-2] == 257  # <|im_end|> still trained (tiny tokenizer's id)


@pytest.mark.parametrize("change", ["record", "max_length", "train_on", "chat_template"])
def test_a_change_in_what_the_tokens_depend_on_misses(tiny_model_dir, tmp_path, count_builds, change):
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    _datamodule(tiny_model_dir, path).training_examples("train")
    options = {}
    if change == "record":
        path = write_jsonl(tmp_path / "train.jsonl", [{**RECORDS[0], "answer": "hello"}, RECORDS[1]])
    elif change == "max_length":
        options = {"max_length": 33}
    elif change == "train_on":
        options = {"train_on": "last_assistant"}
    else:
        template = tmp_path / "template.jinja"
        template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
                            "{% if add_generation_prompt %}assistant: {% endif %}")
        options = {"chat_template": str(template)}
    changed = _datamodule(tiny_model_dir, path, **options).training_examples("train")
    assert count_builds["training"] == 2
    rebuilt = _datamodule(tiny_model_dir, path, cache_tokens=False, **options).training_examples("train")
    assert _columns(changed) == _columns(rebuilt)


def test_off_means_never_stored(tiny_model_dir, tmp_path, count_builds):
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    for _ in range(2):
        _datamodule(tiny_model_dir, path, cache_tokens=False).training_examples("train")
    assert count_builds["training"] == 2
    assert os.listdir(os.environ["SFT_TOKEN_CACHE"]) == []


def test_a_damaged_or_half_written_copy_is_built_again(tiny_model_dir, tmp_path, count_builds):
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    first = _columns(_datamodule(tiny_model_dir, path).training_examples("train"))
    cache_root = os.environ["SFT_TOKEN_CACHE"]
    (folder,) = _split_folders(cache_root)
    for name in os.listdir(os.path.join(cache_root, folder, "dataset")):
        if name.endswith(".arrow"):
            os.remove(os.path.join(cache_root, folder, "dataset", name))
    again = _columns(_datamodule(tiny_model_dir, path).training_examples("train"))
    assert count_builds["training"] == 2 and again == first
    assert _split_folders(cache_root) == [folder]  # stored whole again, no partial folder beside it


def test_a_folder_without_its_completion_mark_is_not_read(tmp_path):
    (tmp_path / "k").mkdir()  # what a copy made by hand or an older version would leave under the final name
    (tmp_path / "k" / "stats.json").write_text("{broken")
    built = []

    def build():
        built.append(1)
        return datasets.Dataset.from_list([{"x": 1}]), None
    dataset, stats, from_cache = cached_split(tmp_path, "k", build)
    assert built == [1] and not from_cache and stats is None and dataset["x"] == [1]
    dataset, stats, from_cache = cached_split(tmp_path, "k", build)
    assert built == [1] and from_cache and dataset["x"] == [1]


def _refuse_to_read(monkeypatch):
    """Any parse or normalisation of a record file fails the test."""
    import datamodules.normalize as normalize

    def refuse(*args, **kwargs):
        raise AssertionError("a warm start read the records")
    monkeypatch.setattr(normalize, "load_records", refuse)
    monkeypatch.setattr(normalize, "normalize_row", refuse)


def test_a_warm_start_parses_no_record(tiny_model_dir, tmp_path, count_builds, monkeypatch):
    from datamodules.inspect import split_errors

    path = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    val_path = write_jsonl(tmp_path / "val.jsonl", RECORDS[:1])
    cold = _datamodule(tiny_model_dir, path, val_path=val_path)
    cold.setup("fit")
    cold.setup("predict")
    cold_state = cold.state_dict()
    _refuse_to_read(monkeypatch)
    warm = _datamodule(tiny_model_dir, path, val_path=val_path)
    warm.setup("fit")
    warm.setup("predict")
    assert count_builds == {"training": 2, "prompts": 1}  # train and val once each, by the cold module
    assert split_errors(warm, "train", limit=20) == []  # sft inspect's check: the tokens were made after it
    for split in ("train", "val", "predict"):
        assert _columns(warm.examples[split]) == _columns(cold.examples[split])
    assert warm.state_dict() == cold_state  # the checkpoint's fingerprint of the data, read back
    assert cold_state["training_data"]["records"] == 2


def test_one_byte_changed_in_a_record_misses(tiny_model_dir, tmp_path, count_builds):
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    first = _datamodule(tiny_model_dir, path)
    first.training_examples("train")
    content = Path(path).read_bytes()
    changed = content.replace(b'"answer": "B"', b'"answer": "A"')
    assert len(changed) == len(content) and sum(a != b for a, b in zip(content, changed)) == 1
    Path(path).write_bytes(changed)
    second = _datamodule(tiny_model_dir, path)
    examples = second.training_examples("train")
    assert count_builds["training"] == 2
    assert examples["choice_label"] != first.examples["train"]["choice_label"]
    assert second.train_fingerprint() != first.train_fingerprint()
    rebuilt = _datamodule(tiny_model_dir, path, cache_tokens=False).training_examples("train")
    assert _columns(examples) == _columns(rebuilt)
