"""`sft export-gguf`: tiny Llama/Qwen folders → GGUF (f16, q8_0) → transformers' GGUF loader → same logits."""

import json

import gguf
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen3Config, Qwen3ForCausalLM

import modules.export.gguf as our_gguf
from lightning_app.main import main
from modules.export.gguf import MAX_RELATIVE_ERROR, GGUFExportError, export_gguf, report_path
from tests.tiny import CHATML_TEMPLATE, IM_END, IM_START, VOCAB_SIZE, build_tokenizer


def _check_report(report: dict, out, weight_type: str) -> None:
    assert report["passed"] and report["gguf_file"] == str(out) and out.is_file()
    assert json.loads(report_path(out).read_text()) == report
    assert 0 < report["relative_error"] <= MAX_RELATIVE_ERROR[weight_type]  # 0 would mean nothing was rounded
    assert report["weight_error"] <= MAX_RELATIVE_ERROR[weight_type]
    # The byte-level test tokenizer survives: template, EOS and the probes' ids (it has no merges, see below).
    assert report["tokenizer"] == {"chat_template_equal": True, "eos_token_equal": True, "probe_ids_equal": True}


@pytest.mark.parametrize("weight_type", ["f16", "q8_0"])
@pytest.mark.parametrize("folder_fixture", ["tiny_model_dir", "tiny_qwen_dir"])
def test_export_reloads_with_the_same_logits(folder_fixture, weight_type, request, tmp_path):
    out = tmp_path / f"model-{weight_type}.gguf"
    report = export_gguf(request.getfixturevalue(folder_fixture), out, weight_type)
    _check_report(report, out, weight_type)
    assert report["architecture"] == {"tiny_model_dir": "llama", "tiny_qwen_dir": "qwen2"}[folder_fixture]
    assert report["merges"] == 0  # a tokenizer llama.cpp refuses (it needs merges); transformers loads it


def test_metadata_is_what_llama_cpp_reads(tiny_model_dir, tmp_path):
    out = tmp_path / "model.gguf"
    main(["export-gguf", str(tiny_model_dir), "--out", str(out), "--type", "q8_0"])
    fields = gguf.GGUFReader(out).fields

    def value(key):
        field = fields[key]
        return field.contents()

    assert value("general.architecture") == "llama"
    assert [value(f"llama.{key}") for key in ["context_length", "embedding_length", "block_count",
            "feed_forward_length", "attention.head_count", "attention.head_count_kv", "rope.dimension_count",
            "vocab_size"]] == [512, 32, 2, 64, 4, 2, 8, VOCAB_SIZE]
    assert value("llama.rope.freq_base") == 10000.0
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert value("tokenizer.chat_template") == CHATML_TEMPLATE
    assert value("tokenizer.ggml.eos_token_id") == IM_END and value("tokenizer.ggml.padding_token_id") == IM_END
    token_types = value("tokenizer.ggml.token_type")
    assert token_types[IM_START] == token_types[IM_END] == gguf.TokenType.CONTROL and token_types[104] == gguf.TokenType.NORMAL
    tensor_types = {tensor.name: tensor.tensor_type for tensor in gguf.GGUFReader(out).tensors}
    assert tensor_types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert tensor_types["blk.0.attn_norm.weight"] == tensor_types["output_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_qwen3_with_tied_embeddings(tmp_path):
    """Tied: no output.weight in the file, tied again on reload. head_dim 128: transformers' GGUF
    loader has no head_dim key for qwen3 and assumes Qwen3Config's 128 (true of the released models)."""
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=512,
                         eos_token_id=IM_END, pad_token_id=IM_END, tie_word_embeddings=True)
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "qwen3")
    build_tokenizer().save_pretrained(tmp_path / "qwen3")
    out = tmp_path / "qwen3.gguf"
    report = export_gguf(tmp_path / "qwen3", out, "f16")
    _check_report(report, out, "f16")
    assert "output.weight" not in {tensor.name for tensor in gguf.GGUFReader(out).tensors}


def test_unpermuted_llama_attention_fails_and_is_renamed(tiny_model_dir, tmp_path, monkeypatch):
    """Without llama.cpp's Q/K order the tiny model's logits move little, but its weights do not match."""
    monkeypatch.setattr(our_gguf, "interleave_rope_halves", lambda weight, heads: weight)
    out = tmp_path / "model.gguf"
    with pytest.raises(GGUFExportError, match="differs from the merged model"):
        export_gguf(tiny_model_dir, out, "f16")
    report = json.loads(report_path(out).read_text())
    assert not report["passed"] and report["weight_error"] > 0.5
    assert not out.exists() and (tmp_path / "model.gguf.failed").is_file()


def test_unsupported_architecture_is_named(tmp_path):
    GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB_SIZE, n_embd=32, n_layer=1, n_head=4, n_positions=64,
                               bos_token_id=IM_END, eos_token_id=IM_END)).save_pretrained(tmp_path / "gpt2")
    build_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(GGUFExportError, match="model_type 'gpt2'.*supported are llama, qwen2, qwen3"):
        export_gguf(tmp_path / "gpt2", tmp_path / "gpt2.gguf")
    assert list(tmp_path.glob("gpt2.*")) == []
