"""Small commands beside LightningCLI's own: ``sft inspect`` and ``sft fetch-model``."""

import argparse

from datamodules.inspect import inspect_split


def inspect_command(argv: list[str]) -> None:
    """sft inspect --config X.yaml [--show N] [--dump FILE.jsonl] [--split train|val|test]."""
    parser = argparse.ArgumentParser(prog="sft inspect", description="Show and dump tokens and labels.")
    parser.add_argument("--show", type=int, default=3, help="examples to print with trained tokens marked")
    parser.add_argument("--dump", help="write every example's input_ids, labels and text to this jsonl")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    own_args, cli_args = parser.parse_known_args(argv)
    from lightning_app.cli import SFTCLI  # imported late: fetch-model must not pay for Lightning's import

    cli = SFTCLI(args=cli_args, run=False)
    inspect_split(cli.datamodule, own_args.split, own_args.show, own_args.dump)


def fetch_model_command(argv: list[str]) -> None:
    """sft fetch-model ALIAS: download and convert an embedded model once, print its folder."""
    from modules.embedded import ensure_embedded_model

    parser = argparse.ArgumentParser(prog="sft fetch-model", description=fetch_model_command.__doc__)
    parser.add_argument("alias", nargs="?", default="smollm2-135m-instruct")
    print(ensure_embedded_model(parser.parse_args(argv).alias))


EXTRA_COMMANDS = {"inspect": inspect_command, "fetch-model": fetch_model_command}
