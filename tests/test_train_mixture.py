"""Several training files of different formats, mixed by weight with the run's seed."""

import json

import numpy as np
import pytest
import torch
import yaml

from datamodules.sft_datamodule import SFTDataModule
from lightning_app.main import main

QA = [{"question": f"q{n}?", "answer": f"a{n}"} for n in range(8)]
SHAREGPT = [{"conversations": [{"from": "human", "value": f"hi {n}"}, {"from": "gpt", "value": f"hello {n}"}]}
            for n in range(4)]
SEED = 1234


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def expected_mixture(lengths: list[int], probabilities: list[float], seed: int) -> list[tuple[int, int]]:
    """(source, row) drawn with numpy's seeded choice, each source in file order, until one runs out."""
    draws = np.random.default_rng(seed).choice(len(lengths), size=1000, p=probabilities)
    taken, order = [0] * len(lengths), []
    for source in draws:
        order.append((int(source), taken[source]))
        taken[source] += 1
        if taken[source] == lengths[source]:
            return order
    raise AssertionError("1000 draws should exhaust a source")


@pytest.fixture
def sources(tmp_path):
    qa, chat = write_jsonl(tmp_path / "qa.jsonl", QA), write_jsonl(tmp_path / "chat.jsonl", SHAREGPT)
    return [{"path": qa, "format": "qa", "weight": 3.0}, {"path": chat, "format": "sharegpt", "weight": 1.0}]


def test_mixed_train_split_follows_the_weights_and_the_seed_and_both_formats_tokenise(sources, tiny_model_dir,
                                                                                     tmp_path):
    data = SFTDataModule(train_path=sources, format="typed", tokenizer_name_or_path=str(tiny_model_dir))
    torch.manual_seed(SEED)  # what seed_everything does: the mixture's seed is the run's
    data.setup("fit")

    expected = expected_mixture([len(QA), len(SHAREGPT)], [0.75, 0.25], SEED)
    paths = [source["path"] for source in sources]
    assert [(record.source, record.id) for record in data.records("train")] == [
        (paths[source], str(row)) for source, row in expected]
    used = [sum(1 for source, _ in expected if source == number) for number in (0, 1)]
    assert [count.used for count in data.mixture.counts] == used and 0 < used[1] < used[0]
    assert f"{paths[0]} (qa, weight 3) {used[0]} of 8" in data.mixture.summary()

    checkpoint = tmp_path / "hparams.pt"  # LightningCLI reads a checkpoint's hyperparameters with weights_only
    torch.save({"datamodule_hyper_parameters": dict(data.hparams)}, checkpoint)
    assert torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]["train_path"][1]["weight"] == 1.0

    examples = data.training_examples("train")
    assert len(examples) == len(expected)
    assert examples["record_type"].count("qa") == used[0]
    assert examples["record_type"].count("generic-generate") == used[1]


def test_a_plain_train_path_string_still_reads_one_file(sources, tiny_model_dir):
    data = SFTDataModule(train_path=sources[0]["path"], format="qa", tokenizer_name_or_path=str(tiny_model_dir))
    assert len(data.records("train")) == len(QA) and data.mixture is None


def test_weights_must_be_positive(sources):
    sources[1]["weight"] = 0
    with pytest.raises(ValueError, match="source 2 .*weight must be > 0"):
        SFTDataModule(train_path=sources)


def test_a_list_of_sources_parses_from_yaml(sources, tmp_path, capsys):
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump({"data": {"train_path": sources}}), encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["data"]["train_path"]
    assert [(s["path"], s["format"], s["weight"]) for s in printed] == [
        (s["path"], s["format"], s["weight"]) for s in sources]
