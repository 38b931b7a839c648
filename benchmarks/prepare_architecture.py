"""Make an architecture folder loadable: a chat tokenizer beside its committed config.json.

A folder under ``benchmarks/architectures/`` holds only a model's config.json; with
``model.init_from_config: true`` the model is built from it with random weights. The run still
needs a tokenizer with a chat template from that folder (the data module reads it from
``model_name_or_path``). This saves one there — by default the embedded SmolLM2-135M-Instruct's
(ChatML, 49 152 ids) — and sets the config's BOS/EOS/pad ids to the tokenizer's, so that generation
stops and padding works as the tokenizer means. The saved files are derived: git ignores them.

    .venv/bin/python benchmarks/prepare_architecture.py benchmarks/architectures/qwen3-0.6b
"""

import argparse
import json
from pathlib import Path

from core.files import write_text_atomically
from core.tokenizer import load_tokenizer

SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def prepare_architecture(folder: Path, tokenizer_source: str = "smollm2-135m-instruct") -> dict[str, int | None]:
    """Save ``tokenizer_source``'s tokenizer into ``folder`` and give its config.json the tokenizer's
    special-token ids; returns those ids. The tokenizer must fit in the config's vocabulary."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: an architecture folder holds a model's config.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(tokenizer_source)
    if len(tokenizer) > config["vocab_size"]:
        raise ValueError(
            f"the tokenizer of '{tokenizer_source}' has {len(tokenizer)} tokens but {config_path} has vocab_size "
            f"{config['vocab_size']}: token ids past the embedding would fail; pick a smaller tokenizer"
        )
    token_ids = {name: getattr(tokenizer, name) for name in SPECIAL_TOKEN_IDS}
    tokenizer.save_pretrained(folder)
    if any(config.get(name) != token_id for name, token_id in token_ids.items()):
        config.update(token_ids)
        write_text_atomically(config_path, json.dumps(config, indent=2) + "\n")
    return token_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an architecture folder holding config.json")
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct",
                        help="embedded alias, hub name or folder of a chat tokenizer (default: %(default)s)")
    args = parser.parse_args()
    token_ids = prepare_architecture(args.folder, args.tokenizer)
    print(f"{args.folder}: tokenizer of {args.tokenizer} saved; config ids {token_ids}")


if __name__ == "__main__":
    main()
