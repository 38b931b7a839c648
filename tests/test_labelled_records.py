"""`sft score` and `sft report` read their labelled file with the spec `SFTDataModule` builds from the
same options (lightning_app/labelled_records.py): one way from options to a spec."""

import argparse
import dataclasses

import yaml

from datamodules.sft_datamodule import SFTDataModule
from lightning_app.labelled_records import add_data_arguments, spec_from_arguments

DATA = {"format": "qa", "fields": {"question": "Q", "answer": "A"}, "system_prompt": "Be brief.", "metric": "rouge",
        "train_on": "last_assistant", "batch_size": 2}


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args(["--references", "refs.jsonl", *argv])


def test_a_configs_data_section_gives_the_data_modules_spec(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"model_name_or_path": "x"}, "data": DATA}), encoding="utf-8")
    assert spec_from_arguments(parsed("--config", str(config))) == SFTDataModule(**DATA).spec


def test_flags_win_over_the_config_and_defaults_are_the_data_modules(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": DATA}), encoding="utf-8")
    spec = spec_from_arguments(parsed("--config", str(config), "--data.format", "typed", "--data.fields", '{"prompt": "P"}'))
    assert spec == dataclasses.replace(SFTDataModule(**DATA).spec, record_format="typed", renames={"prompt": "P"})
    assert spec_from_arguments(parsed()) == SFTDataModule().spec  # nothing given: the data module's own defaults
