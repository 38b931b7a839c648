"""The GGUF as llama.cpp itself runs it, and llama.cpp's K-quants: the optional ``llama`` extra.

transformers' GGUF loader (the logit check of ``modules/export/gguf.py``) reads the weights back,
but users run the file in llama.cpp or Ollama, with llama.cpp's tokenizer and the chat template
stored in the file. With ``pip install -e '.[llama]'`` (llama-cpp-python 0.3.36, which builds
llama.cpp from source: 37 min on 2 busy cores here) the export also loads the file in llama.cpp,
answers ``ANSWER_PROBES`` greedily with the GGUF's own template (``chat_format="chat_template.default"``),
and compares each answer with the merged model's greedy answer in transformers. llama.cpp's
quantizer (``llama_model_quantize``) makes the K-quants from the f16 file. Without the extra the
check is reported as skipped and the K-quant types name the extra.
"""

import ctypes
import importlib.util
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from datamodules.chat_tokens import prompt_ids_for_generation
from modules.export.gguf_metadata import GGUFExportError
from modules.generation.plan import GenerationSettings, generate_answers

# Short, multi-turn, numbers and a list: the template's role headers, turn ends and plain text all matter.
ANSWER_PROBES = [
    [{"role": "user", "content": "What is 2 plus 3?"}],
    [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7"},
     {"role": "user", "content": "And an even one?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "List three colours of the rainbow."}],
    [{"role": "user", "content": "How do you say 'thank you' in French?"}],
]
MAX_NEW_TOKENS = 48
CONTEXT = 256  # the longest probe and its answer, with room
K_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
            "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
INSTALL_HINT = "pip install -e '.[llama]' (llama-cpp-python 0.3.36; it builds llama.cpp, ~40 min on 2 cores)"


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# 1. The K-quants ----------------------------------------------------------------------------------
def require_quantizer(weight_type: str) -> None:
    """One line before any file work: the K-quants come from llama.cpp's quantizer only."""
    if weight_type in K_QUANTS and not llama_cpp_installed():
        raise GGUFExportError(f"--type {weight_type} is made by llama.cpp's quantizer, which is not installed: {INSTALL_HINT}")


def quantize(f16_path: Path, out: Path, weight_type: str) -> None:
    """llama.cpp's quantizer, as its ``llama-quantize`` runs it: the f16 file in, a K-quant file out.
    A matrix whose rows are not whole 256-weight blocks gets llama.cpp's own fallback type (SmolLM2's
    576-wide rows: Q5_0/Q5_1/Q8_0 for Q4_K/Q5_K/Q6_K), as ``llama-quantize`` would give it."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[weight_type])
    params.nthread = threads()
    with _quiet_native_output():
        status = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0 or not out.is_file():
        raise GGUFExportError(f"llama.cpp's quantizer could not make {weight_type} from {f16_path} (status {status})")


# 2. Answers on both sides -------------------------------------------------------------------------
def transformers_answers(model, tokenizer, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """The merged model's greedy answers, one prompt at a time (no padding), as ``sft predict`` decodes."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    answers = []
    for conversation in ANSWER_PROBES:
        ids = torch.tensor([prompt_ids_for_generation(tokenizer, conversation)])  # (1, seq)
        answers += generate_answers(model, tokenizer, ids, torch.ones_like(ids), settings)
    return answers


def llama_cpp_answers(path: Path, max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list[str], float]:
    """llama.cpp's greedy answers (temperature 0, no repeat penalty) with the GGUF's own chat template,
    and its generation speed in tokens/s (prompt processing included, as a chat user waits for it)."""
    import llama_cpp

    with _quiet_native_output():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=CONTEXT, n_threads=threads(), verbose=False, seed=0,
                              chat_format="chat_template.default")  # the file's template, never a built-in one
        replies = [_answer(llm, conversation, max_new_tokens) for conversation in ANSWER_PROBES]
    tokens, seconds = sum(reply[1] for reply in replies), sum(reply[2] for reply in replies)
    return [reply[0] for reply in replies], tokens / seconds if seconds else 0.0


def _answer(llm, conversation: list[dict], max_new_tokens: int) -> tuple[str, int, float]:
    """One probe from an empty KV cache (llama-cpp-python 0.3.36's prefix reuse ran out of cache slots on
    the third probe, and speeds stay comparable): the answer, its tokens and seconds."""
    import llama_cpp

    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
    started = time.perf_counter()
    try:
        reply = llm.create_chat_completion(messages=conversation, temperature=0.0, max_tokens=max_new_tokens,
                                           repeat_penalty=1.0)
    except RuntimeError as error:  # the context filled: it stops at max_tokens only on whole UTF-8 characters
        return f"[llama.cpp stopped: {error}]", 0, 0.0
    return reply["choices"][0]["message"]["content"].strip(), reply["usage"]["completion_tokens"], \
        time.perf_counter() - started


def compare_answers(path: Path, model, tokenizer, merges: int) -> dict:
    """The report's ``llama_cpp`` entry: how many probe answers agree, each pair, and llama.cpp's speed."""
    if not llama_cpp_installed():
        return {"checked": False, "reason": f"llama-cpp-python is not installed: {INSTALL_HINT}"}
    if merges == 0:
        return {"checked": False, "reason": "the tokenizer has no BPE merges, which llama.cpp requires to load it"}
    try:
        theirs, tokens_per_second = llama_cpp_answers(path)
    except ValueError as error:  # llama-cpp-python's "Failed to load model from file"
        return {"checked": True, "load_error": f"{type(error).__name__}: {error}", "agree": 0,
                "probes": len(ANSWER_PROBES)}
    ours = transformers_answers(model, tokenizer)
    pairs = [{"prompt": conversation[-1]["content"], "transformers": mine, "llama_cpp": its}
             for conversation, mine, its in zip(ANSWER_PROBES, ours, theirs)]
    return {"checked": True, "agree": sum(pair["transformers"] == pair["llama_cpp"] for pair in pairs),
            "probes": len(pairs), "max_new_tokens": MAX_NEW_TOKENS, "tokens_per_second": round(tokens_per_second, 1),
            "answers": pairs}


@contextmanager
def _quiet_native_output():
    """llama.cpp writes its loading and quantizing log to the process's stderr from C: file descriptor 2
    points at /dev/null meanwhile, so the export still prints one line."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
