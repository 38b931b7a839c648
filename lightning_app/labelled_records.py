"""Labelled records for ``sft score`` and ``sft report``, read exactly as training reads them.

The format, field renames, ShareGPT roles, system prompt and metric come from a config's ``data`` section
(``--config``) and/or ``--data.format`` / ``--data.fields`` / ``--data.metric`` flags, so an
answers file made elsewhere is scored with the same records ``sft test`` would use.
"""

import argparse
import json

import yaml

from core.record import METRICS, Record
from datamodules.formats import FORMATS
from datamodules.normalize import ConversationSpec, read_records
from datamodules.sft_datamodule import SFTDataModule


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--references", required=True, help="the labelled file (any data format)")
    parser.add_argument("--config", help="a config whose data section gives format, fields, system_prompt, metric")
    parser.add_argument("--data.format", dest="format", choices=FORMATS, help="record format (default: typed)")
    parser.add_argument("--data.fields", dest="fields", help='field renames as JSON, e.g. \'{"question": "Q"}\'')
    parser.add_argument("--data.metric", dest="metric", choices=METRICS, help="override the metric of every record")
    parser.add_argument("--data.system_prompt", dest="system_prompt", help="system message put first")
    parser.add_argument("--data.roles", dest="roles", help='ShareGPT speaker names as JSON, e.g. \'{"bot": "assistant"}\'')


def _config_data(config_path: str | None) -> dict:
    if not config_path:
        return {}
    with open(config_path, encoding="utf-8") as config_file:
        return (yaml.safe_load(config_file) or {}).get("data") or {}


def spec_from_arguments(args: argparse.Namespace) -> ConversationSpec:
    """Flags win over the config's data section; ``SFTDataModule``'s own defaults fill the rest."""
    options = dict(_config_data(args.config))
    flags = {"format": args.format, "fields": json.loads(args.fields) if args.fields else None,
             "roles": json.loads(args.roles) if args.roles else None, "system_prompt": args.system_prompt,
             "metric": args.metric}
    options.update({name: value for name, value in flags.items() if value is not None})
    return SFTDataModule.spec_from_options(options)


def reference_records(args: argparse.Namespace) -> list[Record]:
    return read_records(args.references, spec_from_arguments(args))
