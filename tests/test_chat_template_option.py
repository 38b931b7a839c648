"""`model.chat_template` for base models: a tokenizer without a template (and without ChatML's
tokens) gets ChatML, the model grows rows for the added tokens, and LoRA trains exactly those rows.

The base tokenizer: byte b has id b, <|endoftext|> = 256 (EOS), no chat template; ``chatml`` adds
<|im_start|> = 257 and <|im_end|> = 258, and the model's 257 embedding rows grow to 259.
"""

import json
from functools import partial

import pytest
import torch
import yaml
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from core.constants import IGNORE_INDEX
from core.tokenizer import CHATML_TEMPLATE, ModelLoadError, load_tokenizer
from datamodules.chat_tokens import tokenize_conversation
from lightning_app.main import main
from modules.peft.checkpoint_keys import trainable_state
from tests.factories import QA_RECORDS, qa_datamodule, quiet_trainer, sft_module, write_jsonl
from tests.tiny import build_base_tokenizer, byte_ids

END_OF_TEXT, IM_START, IM_END = 256, 257, 258
BASE_VOCAB = 257


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=BASE_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=END_OF_TEXT, bos_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    build_base_tokenizer().save_pretrained(folder)
    return folder


def test_without_the_option_the_error_names_it(base_model_dir):
    with pytest.raises(ModelLoadError, match="model.chat_template"):
        load_tokenizer(str(base_model_dir))


def test_chatml_adds_tokens_and_masks_answer_end_and_newline(base_model_dir):
    tokenizer = load_tokenizer(str(base_model_dir), chat_template="chatml")
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [IM_START, IM_END]
    assert tokenizer.added_template_token_ids == [IM_START, IM_END]
    assert tokenizer.eos_token_id == IM_END and tokenizer.pad_token_id == IM_END
    example = tokenize_conversation(tokenizer, [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "yo"}])
    prompt = [IM_START, *byte_ids("user\nhi"), IM_END, 10, IM_START, *byte_ids("assistant\n")]
    answer = [*byte_ids("yo"), IM_END, 10]
    assert example["input_ids"] == prompt + answer
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + answer


def test_a_template_file_is_used(base_model_dir, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tokenizer = load_tokenizer(str(base_model_dir), chat_template=str(template))
    assert tokenizer.added_template_token_ids == [] and len(tokenizer) == BASE_VOCAB
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "user: hi\nassistant: "
    with pytest.raises(ModelLoadError, match="neither chatml nor a Jinja template file"):
        load_tokenizer(str(base_model_dir), chat_template=str(tmp_path / "missing.jinja"))


def effective_rows(module) -> tuple[torch.Tensor, torch.Tensor]:
    """(vocab, hidden) input embeddings and output-layer rows as the adapter model computes them."""
    model = module.model
    all_ids = torch.arange(len(module.tokenizer))
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(all_ids)
        output_rows = model.get_output_embeddings()(torch.eye(32)).T  # (vocab, hidden): lm_head's weight
    return embeddings.clone(), output_rows.clone()


def test_lora_fit_trains_the_new_rows_only(base_model_dir, tmp_path):
    module = sft_module(base_model_dir, chat_template="chatml", peft_config=LoraConfig(r=4, lora_alpha=8),
                        optimizer=partial(torch.optim.SGD, lr=1.0), lr_schedule="constant")
    assert module.model.config.vocab_size == BASE_VOCAB + 2  # resized before PEFT
    embeddings_before, output_before = effective_rows(module)
    datamodule = qa_datamodule(base_model_dir, write_jsonl(tmp_path / "train.jsonl", QA_RECORDS), batch_size=4,
                               chat_template="chatml")
    quiet_trainer(max_steps=2).fit(module, datamodule=datamodule)
    embeddings_after, output_after = effective_rows(module)
    new = [IM_START, IM_END]
    assert not torch.allclose(embeddings_after[new], embeddings_before[new])
    assert not torch.allclose(output_after[IM_END], output_before[IM_END])
    assert torch.equal(embeddings_after[:BASE_VOCAB], embeddings_before[:BASE_VOCAB])  # frozen rows
    assert torch.equal(output_after[:BASE_VOCAB], output_before[:BASE_VOCAB])
    kept = trainable_state(module, module.state_dict())  # what an adapter-only checkpoint keeps
    assert any("embed_tokens" in key and "trainable_tokens_delta" in key for key in kept)
    assert any("lm_head" in key and "trainable_tokens_delta" in key for key in kept)


def test_cli_fit_then_predict_with_the_same_template(base_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    questions = [{"id": r["id"], "question": r["question"]} for r in QA_RECORDS[:2]]
    config = {
        "seed_everything": 7,
        "trainer": {"accelerator": "cpu", "max_steps": 2, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "base"}}},
        "model": {"model_name_or_path": str(base_model_dir), "chat_template": "chatml",
                  "peft_config": {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}},
                  "generation": {"max_new_tokens": 4}},
        "data": {"train_path": write_jsonl(tmp_path / "train.jsonl", QA_RECORDS),
                 "predict_path": write_jsonl(tmp_path / "predict.jsonl", questions),
                 "format": "qa", "batch_size": 2},
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    checkpoint = torch.load(tmp_path / "runs" / "base" / "fit" / "checkpoints" / "last.ckpt",
                            map_location="cpu", weights_only=False)
    assert any("trainable_tokens_delta" in key for key in checkpoint["state_dict"])  # the new rows travel
    merged = tmp_path / "runs" / "base" / "fit" / "merged"  # passed the merge check at the end of fit
    merged_tokenizer = AutoTokenizer.from_pretrained(merged)
    assert merged_tokenizer.chat_template == CHATML_TEMPLATE and merged_tokenizer.eos_token_id == IM_END
    merged_model = AutoModelForCausalLM.from_pretrained(merged)
    assert merged_model.get_input_embeddings().num_embeddings == BASE_VOCAB + 2
    assert merged_model.generation_config.eos_token_id == IM_END  # stops where training taught it to
    main(["predict", "--config", str(path), "--ckpt_path", "last"])
    answers = json.loads((tmp_path / "runs" / "base" / "predict" / "predictions.json").read_text())
    assert [row["id"] for row in answers["result"]["results"]] == ["q0", "q1"]
