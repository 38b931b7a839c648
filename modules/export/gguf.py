"""Writing a merged Hugging Face folder as one GGUF file for llama.cpp and Ollama, checked by logits and by llama.cpp.

``export_gguf(folder, out, "f16" | "q8_0" | "q4_k_m" | "q5_k_m" | "q6_k")`` loads the folder (``sft fit`` writes ``<run>/merged``),
writes its hyperparameters and tokenizer (``modules/export/gguf_metadata.py``) and its tensors under
llama.cpp's names (``gguf.get_tensor_name_map``): matrices in f16 or Q8_0 (``gguf.quants``, blocks
of 32 along a row; a row of another length stays f16), norms and biases in f32. For the Llama
architecture llama.cpp expects each head's Q and K rows interleaved for its RoPE (its converter
permutes them; transformers' GGUF loader permutes them back), so they are permuted here too. The
K-quants are llama.cpp's own quantizer run on the f16 file (``modules/export/llama_cpp_check.py``,
the ``llama`` extra).

The check is the merge's (``modules/export/hf_folder.py``): the file is reloaded with transformers' GGUF
loader (``from_pretrained(folder, gguf_file=...)``), and its logits on the chat probes are compared
with the folder's: ``relative_error = max|gguf - folder| / max|folder|``, and so are its weights
(``weight_error``), both written to ``<out>.report.json``. Above the tolerance the file is renamed
``<out>.failed`` and ``GGUFExportError`` is raised. The probes are tokenized with the folder's own tokenizer, so the
check measures the weights; whether the GGUF's tokenizer (as transformers rebuilds it) splits the
probes the same way and keeps the chat template is recorded beside it. With the ``llama`` extra,
llama.cpp loads the file and answers probe prompts greedily with the file's chat template: on f16
every answer must equal the merged model's or the export fails; quantized, the report says how many
agree and a warning line says when answers change.
"""

import json
import os
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.disk_errors import removed_on_write_fault
from core.files import write_text_atomically
from modules.backbone.weight_files import check_weight_files
from modules.export.gguf_metadata import GGUFExportError, add_hyperparameters, add_tokenizer, gguf_architecture
from modules.export.hf_folder import probe_inputs, probe_logits, relative_error
from modules.export.llama_cpp_check import K_QUANTS, compare_answers, quantize, require_quantizer

# Logits' relative error measured: f16 4-5e-4 on the tiny test models, 9.4e-4 on SmolLM2-135M;
# Q8_0 0.8-1.2e-2 tiny, 3.0e-2 on SmolLM2-135M. A wrong Q/K order: weight_error 1.5 (tiny logits only 7e-3).
# K-quants from llama.cpp's quantizer on SmolLM2-135M (its 576-wide rows fall back to Q5_0/Q5_1/Q8_0): logits
# q6_k 6.2e-2, q5_k_m 2.3e-1, q4_k_m 1.6e-1, weights 1.6e-2 / 3.0e-2 / 5.9e-2 (q6_k logits 5.4e-2 on the width-256 test model).
# The bounds sit well below the wrong-Q/K-order weight error (1.5), which is what this check is for.
MAX_RELATIVE_ERROR = {"f16": 1e-2, "q8_0": 1e-1, "q6_k": 3e-1, "q5_k_m": 5e-1, "q4_k_m": 5e-1}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}  # written here
WEIGHT_TYPES = [*FILE_TYPES, *K_QUANTS]
# About the bytes a weight takes on disk while exporting; a K-quant holds its f16 source (2) at the same time.
BYTES_PER_WEIGHT = {"f16": 2, "q8_0": 34 / 32, "q6_k": 2 + 210 / 256, "q5_k_m": 2 + 176 / 256, "q4_k_m": 2 + 144 / 256}
Q8_0_BLOCK = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]  # 32 weights per block


def report_path(out: Path) -> Path:
    return out.with_name(out.name + ".report.json")


# 1. Tensors ---------------------------------------------------------------------------------------
def gguf_tensors(model, arch: gguf.MODEL_ARCH):
    """(gguf name, float32 array) for every weight, under llama.cpp's names; Llama's Q/K permuted."""
    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd (and transformers' loader ties it back)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"the weight '{hf_name}' has no GGUF name for {config.model_type}")
        tensor = tensor.detach().to("cpu", torch.float32)
        if arch == gguf.MODEL_ARCH.LLAMA and ".self_attn.q_proj." in hf_name:
            tensor = interleave_rope_halves(tensor, config.num_attention_heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and ".self_attn.k_proj." in hf_name:
            tensor = interleave_rope_halves(tensor, config.num_key_value_heads or config.num_attention_heads)
        yield gguf_name, tensor.numpy()


def interleave_rope_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's output rows from HF's two halves (rotate_half) to llama.cpp's pairs.

    Row ``i`` of the first half and row ``i`` of the second half are rotated together; llama.cpp
    wants them next to each other: (heads * 2 * half, ...) → (heads, 2, half, ...) → swap → back.
    """
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def add_tensor(writer: gguf.GGUFWriter, name: str, values: np.ndarray, weight_type: str) -> None:
    """Norms, biases and other vectors in f32; matrices in f16 or Q8_0 (f16 if a row is not whole blocks)."""
    if values.ndim == 1:
        writer.add_tensor(name, values.astype(np.float32))
    elif weight_type == "q8_0" and values.shape[-1] % Q8_0_BLOCK == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)  # bytes; shape derived
    else:
        writer.add_tensor(name, values.astype(np.float16))


# 2. The file --------------------------------------------------------------------------------------
def write_gguf(model, tokenizer, path: Path, weight_type: str) -> dict:
    """Write ``model`` and ``tokenizer`` as one GGUF at ``path``; returns what was written."""
    arch = gguf_architecture(model.config)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    add_hyperparameters(writer, model.config, Path(model.config.name_or_path).name or "model")
    writer.add_file_type(FILE_TYPES[weight_type])
    if weight_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer_facts = add_tokenizer(writer, tokenizer, model.config.vocab_size)
    tensor_count = 0
    for name, values in gguf_tensors(model, arch):
        add_tensor(writer, name, values, weight_type)
        tensor_count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": gguf.MODEL_ARCH_NAMES[arch], **tokenizer_facts, "tensors": tensor_count}


# 3. The check -------------------------------------------------------------------------------------
def reload_gguf(path: Path):
    """The GGUF's model (float32) and tokenizer, as transformers' GGUF loader reads them."""
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def tokenizer_checks(original, reloaded, probes: list[torch.Tensor]) -> dict:
    """Whether the GGUF's tokenizer keeps the chat template and the special ids, and splits the probes the same."""
    rendered = [original.decode(ids[0]) for ids in probes]
    return {
        "chat_template_equal": reloaded.chat_template == original.chat_template,
        "eos_token_equal": reloaded.eos_token == original.eos_token,
        "probe_ids_equal": all(reloaded(text, add_special_tokens=False).input_ids == ids[0].tolist()
                               for text, ids in zip(rendered, probes)),
    }


# 4. The whole export ------------------------------------------------------------------------------
def export_gguf(folder: str | Path, out: str | Path, weight_type: str = "f16",
                max_relative_error: float | None = None) -> dict:
    """Write ``folder`` as the GGUF ``out``, reload it, compare logits (and llama.cpp's answers), write
    ``<out>.report.json``."""
    folder, out = Path(folder), Path(out)
    if weight_type not in WEIGHT_TYPES:
        raise GGUFExportError(f"--type must be one of {', '.join(WEIGHT_TYPES)}, got '{weight_type}'")
    require_quantizer(weight_type)
    tolerance = MAX_RELATIVE_ERROR[weight_type] if max_relative_error is None else max_relative_error
    check_weight_files(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gguf_architecture(model.config)  # the unsupported-architecture error before any file work
    tokenizer = AutoTokenizer.from_pretrained(folder)
    staging = out.with_name(out.stem + ".partial.gguf")  # transformers' loader wants the .gguf suffix
    rerun = f"re-run sft export-gguf {folder} --out {out} --type {weight_type}"
    with removed_on_write_fault(staging, "the GGUF file", out, gguf_bytes(model, weight_type),
                                lambda: (f"the merged folder {folder} is intact", rerun)):
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"source": str(folder), "type": weight_type, **write_file(model, tokenizer, staging, weight_type),
                  "max_relative_error": tolerance, "bytes": staging.stat().st_size}
        report.update(measure(staging, model, tokenizer))
        report["llama_cpp"] = compare_answers(staging, model, tokenizer, report["merges"])
        report["passed"] = passed(report, tolerance)
        final = out if report["passed"] else out.with_name(out.name + ".failed")
        report.update(gguf_file=str(final), report=str(report_path(out)))
        write_text_atomically(report_path(out), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        os.replace(staging, final)  # last: the file is in place only with its report beside it
    _announce_or_raise(report)
    return report


def write_file(model, tokenizer, path: Path, weight_type: str) -> dict:
    """f16 and Q8_0 written here; a K-quant from an f16 file beside it (removed after) by llama.cpp's quantizer."""
    if weight_type not in K_QUANTS:
        return write_gguf(model, tokenizer, path, weight_type)
    f16_path = path.with_name(path.stem + ".f16.gguf")
    try:
        written = write_gguf(model, tokenizer, f16_path, "f16")
        quantize(f16_path, path, weight_type)
    finally:
        f16_path.unlink(missing_ok=True)
    return written


def passed(report: dict, tolerance: float) -> bool:
    """transformers reloads it within ``tolerance``, llama.cpp loads it, and on f16 answers as the merged model."""
    llama = report["llama_cpp"]
    llama_ok = not llama["checked"] or (llama.get("load_error") is None
                                        and (report["type"] != "f16" or llama["agree"] == llama["probes"]))
    logits_ok = report.get("load_error") is None and max(report["relative_error"], report["weight_error"]) <= tolerance
    return logits_ok and llama_ok


def gguf_bytes(model, weight_type: str) -> int:
    """About the room the export needs: every weight at ``BYTES_PER_WEIGHT``."""
    return int(sum(parameter.numel() for parameter in model.parameters()) * BYTES_PER_WEIGHT[weight_type])


def measure(path: Path, model, tokenizer) -> dict:
    """Reload the file the way users' transformers code would; its logits' and weights' error.

    ``weight_error`` (max over tensors of max|reloaded - original| / max|original|) catches a
    wrong Q/K order, which a tiny random model's logits barely show.
    """
    probes = probe_inputs(tokenizer)
    try:
        reloaded, reloaded_tokenizer = reload_gguf(path)
    except Exception as error:  # the loader's own message says what it could not read
        return {"relative_error": None, "weight_error": None, "load_error": f"{type(error).__name__}: {error}"}
    original_weights = model.state_dict()
    weight_error = max(relative_error(original_weights[name], tensor)
                       for name, tensor in reloaded.state_dict().items())
    return {"relative_error": relative_error(probe_logits(model, probes), probe_logits(reloaded, probes)),
            "weight_error": weight_error, "tokenizer": tokenizer_checks(tokenizer, reloaded_tokenizer, probes)}


def _announce_or_raise(report: dict) -> None:
    kept = f"the file was kept as {report['gguf_file']} for inspection, the report is {report['report']}"
    llama = report["llama_cpp"]
    if report.get("load_error"):
        raise GGUFExportError(f"transformers could not load the written GGUF ({report['load_error'][:300]}); {kept}.")
    if llama.get("load_error"):
        raise GGUFExportError(f"llama.cpp could not load the written GGUF ({llama['load_error'][:300]}); {kept}.")
    if report["relative_error"] > report["max_relative_error"] or report["weight_error"] > report["max_relative_error"]:
        raise GGUFExportError(
            f"the GGUF differs from the merged model by a relative {report['relative_error']:.3g} in logits and "
            f"{report['weight_error']:.3g} in weights (allowed for {report['type']}: {report['max_relative_error']:g}); {kept}."
        )
    if not report["passed"]:
        raise GGUFExportError(f"llama.cpp's greedy answers on the f16 GGUF differ from the merged model's on "
                              f"{llama['probes'] - llama['agree']} of {llama['probes']} probe prompts (f16 must not "
                              f"change an answer); {kept}, both answers side by side.")
    print(f"GGUF ({report['architecture']}, {report['type']}, relative error {report['relative_error']:.2e}; "
          f"{llama_cpp_summary(llama)}): {report['gguf_file']}")
    if llama["checked"] and llama["agree"] < llama["probes"]:
        print(f"warning: {report['type']} changes llama.cpp's greedy answers on {llama['probes'] - llama['agree']} of "
              f"{llama['probes']} probe prompts (the rounding of the weights; small models feel it most): "
              f"both answers are in {report['report']}")


def llama_cpp_summary(llama: dict) -> str:
    if not llama["checked"]:
        return f"llama.cpp check skipped: {llama['reason']}"
    return (f"llama.cpp answers {llama['agree']} of {llama['probes']} probe prompts as the merged model, "
            f"{llama['tokens_per_second']:.0f} tokens/s")
