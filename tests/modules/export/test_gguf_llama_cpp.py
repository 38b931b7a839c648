"""`sft export-gguf` checked by llama.cpp itself (the llama extra), and the K-quants from its quantizer.

A random tiny model's greedy answers hang on logit gaps of ~1e-3, which f16 rounding can flip; the
model here is first taught one short answer per probe prompt, so its answers are confident and any
difference means the file, its tokenizer or its chat template is read wrong. The K-quants are made
from a random model of width 256: they quantize rows of whole 256-weight blocks only.
"""

import json
import sys

import gguf
import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from tokenizers.pre_tokenizers import ByteLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

import modules.export.llama_cpp_check as llama_cpp_check
from datamodules.chat_tokens import prompt_ids_for_generation
from lightning_app.main import console_main
from modules.export.gguf import GGUFExportError, export_gguf, report_path
from modules.export.llama_cpp_check import ANSWER_PROBES
from tests.tiny import CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START, VOCAB_SIZE

TAUGHT_ANSWERS = ["5", "2", "The sea is wide.", "red, green, blue", "merci"]
NEEDS_EXTRA = "llama.cpp's check needs the llama extra: pip install -e '.[llama]'"


def tokenizer_with_merges() -> PreTrainedTokenizerFast:
    """tests/tiny.py's byte-level ChatML tokenizer plus one merge ("hi" = 259): llama.cpp loads only
    BPE tokenizers with merges. GPT-2's split, so llama.cpp cuts text before merging the same way."""
    specials = {"<|im_start|>": IM_START, "<|im_end|>": IM_END, "<|endoftext|>": END_OF_TEXT}
    vocab = {char: byte for byte, char in bytes_to_unicode().items()} | specials | {"hi": 259}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "i")]))
    backend.pre_tokenizer, backend.decoder = ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})  # already in the vocabulary: ids kept
    tokenizer.chat_template = CHATML_TEMPLATE
    assert tokenizer.convert_tokens_to_ids(list(specials)) == list(specials.values())
    assert tokenizer("this<|im_end|>").input_ids == [116, 259, 115, IM_END]
    return tokenizer


def tiny_llama(width: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512, eos_token_id=IM_END, pad_token_id=IM_END,
                                        bos_token_id=None, tie_word_embeddings=False))


def taught_model(tokenizer, steps: int = 60) -> LlamaForCausalLM:
    """A 2-layer Llama that answers each probe prompt with its TAUGHT_ANSWERS entry."""
    model = tiny_llama(64)
    rows = []
    for conversation, answer in zip(ANSWER_PROBES, TAUGHT_ANSWERS):
        prompt = prompt_ids_for_generation(tokenizer, conversation)
        reply = tokenizer(answer).input_ids + [IM_END]
        rows.append((prompt + reply, [-100] * len(prompt) + reply))
    width = max(len(ids) for ids, _ in rows)  # right padding: masked out and never a label
    ids = torch.tensor([row + [IM_END] * (width - len(row)) for row, _ in rows])  # (5, width)
    labels = torch.tensor([row + [-100] * (width - len(row)) for _, row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row, _ in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
    return model.eval()


def saved(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def taught_dir(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason=NEEDS_EXTRA)  # here too: a skipped test would still train it
    tokenizer = tokenizer_with_merges()
    return saved(taught_model(tokenizer), tokenizer, tmp_path_factory.mktemp("taught"))


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory):
    """Random, width 256: llama.cpp's K-quants quantize rows of whole 256-weight blocks only."""
    return saved(tiny_llama(256), tokenizer_with_merges(), tmp_path_factory.mktemp("wide"))


def test_f16_answers_as_the_merged_model_in_llama_cpp(taught_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason=NEEDS_EXTRA)
    report = export_gguf(taught_dir, tmp_path / "taught.gguf", "f16")
    llama = report["llama_cpp"]
    assert report["passed"] and llama["checked"] and (llama["agree"], llama["probes"]) == (5, 5)
    assert [pair["llama_cpp"] for pair in llama["answers"]] == TAUGHT_ANSWERS  # read with the GGUF's own template
    assert llama["tokens_per_second"] > 0 and json.loads(report_path(tmp_path / "taught.gguf").read_text()) == report


@pytest.mark.parametrize("weight_type, quantized_as", [("q4_k_m", gguf.GGMLQuantizationType.Q4_K),
                                                       ("q5_k_m", gguf.GGMLQuantizationType.Q5_K),
                                                       ("q6_k", gguf.GGMLQuantizationType.Q6_K)])
def test_k_quants_come_from_llama_cpp_and_say_how_many_answers_agree(weight_type, quantized_as, wide_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason=NEEDS_EXTRA)
    out = tmp_path / f"wide-{weight_type}.gguf"
    report = export_gguf(wide_dir, out, weight_type)
    assert report["passed"] and out.is_file() and list(tmp_path.glob("*.f16.gguf")) == []  # the f16 source removed
    assert 0 <= report["llama_cpp"]["agree"] <= report["llama_cpp"]["probes"] == 5
    assert quantized_as in {tensor.tensor_type for tensor in gguf.GGUFReader(out).tensors}
    f16_bytes = 2 * sum(tensor.numel() for tensor in LlamaForCausalLM.from_pretrained(wide_dir).state_dict().values())
    assert report["bytes"] < f16_bytes / 2


def run_console(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["sft", *argv])
    code = 0
    try:
        console_main()
    except SystemExit as stopped:
        code = stopped.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


def test_f16_answers_that_differ_fail_in_one_line_and_quantized_ones_warn(taught_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("llama_cpp", reason=NEEDS_EXTRA)
    other = ["six", *TAUGHT_ANSWERS[1:]]
    monkeypatch.setattr(llama_cpp_check, "transformers_answers", lambda model, tokenizer: other)
    code, _, err = run_console(["export-gguf", str(taught_dir), "--out", str(tmp_path / "m.gguf")], monkeypatch, capsys)
    assert code == 2 and [line for line in err.splitlines() if line.startswith("error: ")] == [
        line for line in err.splitlines() if "differ from the merged model's on 1 of 5 probe prompts" in line]
    assert not (tmp_path / "m.gguf").exists() and (tmp_path / "m.gguf.failed").is_file()
    code, out, _ = run_console(["export-gguf", str(taught_dir), "--out", str(tmp_path / "q.gguf"), "--type", "q8_0"],
                               monkeypatch, capsys)
    assert code == 0 and (tmp_path / "q.gguf").is_file()
    assert "warning: q8_0 changes llama.cpp's greedy answers on 1 of 5 probe prompts" in out


def test_without_the_extra_k_quants_name_it_and_the_check_is_skipped(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(llama_cpp_check, "llama_cpp_installed", lambda: False)
    code, _, err = run_console(["export-gguf", str(tiny_model_dir), "--out", str(tmp_path / "m.gguf"), "--type", "q4_k_m"],
                               monkeypatch, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "pip install -e '.[llama]'" in errors[0] and list(tmp_path.iterdir()) == []
    code, out, _ = run_console(["export-gguf", str(tiny_model_dir), "--out", str(tmp_path / "m.gguf")], monkeypatch, capsys)
    report = json.loads(report_path(tmp_path / "m.gguf").read_text())
    assert code == 0 and report["passed"] and not report["llama_cpp"]["checked"]
    assert "llama.cpp check skipped" in out and ".[llama]" in report["llama_cpp"]["reason"]


def test_a_tokenizer_without_merges_is_not_sent_to_llama_cpp(tiny_model_dir, tmp_path):
    report = export_gguf(tiny_model_dir, tmp_path / "m.gguf", "f16")
    assert report["passed"] and report["merges"] == 0 and not report["llama_cpp"]["checked"]
