"""A local model folder's weight files, checked before transformers reads them.

A download or export cut short leaves a truncated ``model.safetensors``; transformers then stops
deep inside safetensors with ``SafetensorError: incomplete metadata`` and no file name, and a folder
without any weights file gets the hub-download advice, which does not fit a local folder. Reading
each file's header here (safetensors checks that the header covers the whole file, cheaply, by
memory map) names the file and says to download or export it again.
"""

from pathlib import Path

from safetensors import SafetensorError, safe_open

from core.tokenizer import ModelLoadError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_weight_files(folder: str | Path) -> None:
    """ModelLoadError naming the folder if it has no weights file, or the first safetensors file that
    does not read (truncated, or not safetensors); a folder that is no local path passes (a hub name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(
            f"the model folder {folder} has no weights file (none of {', '.join(WEIGHT_FILES)}): the download or "
            "export did not finish; download or export the model into it again"
        )
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(weights, framework="pt"):
                pass
        except SafetensorError as error:
            raise ModelLoadError(
                f"the weights file {weights} cannot be read ({weights.stat().st_size:,} bytes, {error}): it is "
                "truncated or not safetensors; download or export the model again"
            ) from None
