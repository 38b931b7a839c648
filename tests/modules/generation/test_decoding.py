"""Fast answering: batched decoding whose finished rows leave the batch gives exactly the greedy
answers of one-prompt-at-a-time ``generate``; sampling gives ``num_samples`` reproducible answers;
answers keep their records; adapters merged while answering change no answer and leave the
weights exactly as they were."""

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl.trainer.utils import pad

from datamodules.batching import TypeGroupedBatchSampler
from datamodules.sft_datamodule import SFTDataModule
from modules.generation.decoding import can_decode, decode
from modules.generation.merged_adapters import adapted_base_parameters, adapters_merged
from modules.generation.plan import GenerationSettings, generate_answers
from tests.factories import sft_module, write_jsonl
from tests.tiny import IM_END, byte_ids

PROMPTS = ["<|im_start|>user\nhi", "<|im_start|>user\nWhat is 12 plus 30, please?", "ab",
           "<|im_start|>user\nName three colours of the rainbow and one more."]
MAX_NEW_TOKENS = 12


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in PROMPTS]


def one_by_one(model, prompts: list[list[int]], eos: int) -> list[list[int]]:
    """Plain ``generate`` on each unpadded prompt: the reference answers."""
    answers = []
    for prompt in prompts:
        input_ids = torch.tensor([prompt])
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=IM_END)
        answers.append(output[0, len(prompt):].tolist())
    return answers


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = pad([torch.tensor(ids) for ids in prompts], padding_value=IM_END, padding_side="left")
    attention_mask = pad([torch.ones(len(ids), dtype=torch.long) for ids in prompts], padding_value=0,
                         padding_side="left")
    return input_ids, attention_mask


def early_eos(model, prompts: list[list[int]]) -> int:
    """A token one prompt's greedy answer emits at its 3rd step: as EOS, some rows finish early."""
    return one_by_one(model, prompts[:1], eos=-1)[0][2]


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request, tiny_model_dir, tiny_qwen_dir):
    folder = tiny_model_dir if request.param == "llama" else tiny_qwen_dir
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_batched_greedy_answers_are_the_one_by_one_token_ids(tiny_model, tokenizer):
    prompts = prompt_ids(tokenizer)
    eos = early_eos(tiny_model, prompts)
    reference = one_by_one(tiny_model, prompts, eos)
    assert any(len(answer) < MAX_NEW_TOKENS for answer in reference)  # some rows finish early ...
    assert any(len(answer) == MAX_NEW_TOKENS for answer in reference)  # ... while others go on
    step_rows, prompt_rows = [], []  # rows of each decoding step (one new token) and of each prompt forward

    def record(module, args, kwargs):
        (step_rows if kwargs["input_ids"].shape[1] == 1 else prompt_rows).append(kwargs["input_ids"].shape[0])
    tiny_model.register_forward_pre_hook(record, with_kwargs=True)
    assert can_decode(tiny_model)
    assert decode(tiny_model, *left_padded(prompts), [eos], MAX_NEW_TOKENS) == reference
    assert sum(prompt_rows) == len(prompts) and len(prompt_rows) > 1  # once each, in chunks of similar lengths
    assert step_rows[0] == len(prompts) and step_rows[-1] < len(prompts)  # finished rows left the batch


def test_sampling_gives_num_samples_answers_per_row_reproducibly(tiny_model, tokenizer):
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.8, top_p=0.9, num_samples=3)
    inputs = left_padded(prompt_ids(tokenizer))
    torch.manual_seed(7)
    first = decode(tiny_model, *inputs, [IM_END], **settings)
    torch.manual_seed(7)
    again = decode(tiny_model, *inputs, [IM_END], **settings)
    assert first == again and len(first) == 3 * len(PROMPTS)
    assert all(1 <= len(answer) <= MAX_NEW_TOKENS for answer in first)
    assert len({tuple(answer) for answer in first}) > len(PROMPTS)  # samples differ, not one answer repeated
    texts = generate_answers(tiny_model, tokenizer, *inputs, GenerationSettings(**settings))
    assert len(texts) == len(PROMPTS) and all(isinstance(row, list) and len(row) == 3 for row in texts)


def test_answering_batches_are_sorted_by_prompt_length_within_a_type():
    sampler = TypeGroupedBatchSampler(["a", "a", "b", "a", "a"], 3, lengths=[4, 9, 1, 6, 9])
    assert sampler.batches == [[1, 4, 3], [0], [2]]  # longest first, equal lengths in input order


@pytest.mark.parametrize("answer_rows", [64, 2])
def test_predict_answers_stay_with_their_records(tiny_model_dir, tmp_path, answer_rows):
    """Batches sorted by length, many prompts a batch: each answer is its own prompt's one-by-one answer,
    whether the batch decodes at once or 2 rows at a time with the others joining as rows finish."""
    records = [{"id": f"r{i}", "type": "generic-generate", "prompt": "x" * (3 * i + 1), "answer": "y"} for i in range(6)]
    datamodule = SFTDataModule(predict_path=write_jsonl(tmp_path / "p.jsonl", records), format="typed",
                               tokenizer_name_or_path=str(tiny_model_dir), answer_batch_size=4)
    datamodule.setup("predict")
    module = sft_module(tiny_model_dir, generation=GenerationSettings(max_new_tokens=6), generation_per_type={},
                        answer_rows=answer_rows)
    module.eval()
    decoded_rows = []
    module.model.register_forward_pre_hook(lambda _, args, kwargs: decoded_rows.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    answers = [row for batch in datamodule.predict_dataloader() for row in module.predict_step(batch, 0)]
    assert max(decoded_rows) == min(answer_rows, 4)
    assert [row["id"] for row in answers] == ["r5", "r4", "r3", "r2", "r1", "r0"]  # longest prompt first
    prompts = datamodule.prompt_examples("predict")["prompt_ids"]
    for row in answers:
        alone = torch.tensor([prompts[row["row_index"]]])
        expected = generate_answers(module.model, module.tokenizer, alone, torch.ones_like(alone),
                                    GenerationSettings(max_new_tokens=6))
        assert row["content"] == expected[0] and row["id"] == f"r{row['row_index']}"


def lora_model(model_dir):
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=16, init_lora_weights=False)).eval()  # B not zero


def test_merged_adapters_give_the_same_greedy_answers_and_the_weights_come_back_exactly(tiny_model_dir, tokenizer):
    model = lora_model(tiny_model_dir)
    inputs = left_padded(prompt_ids(tokenizer))
    before = [parameter.detach().clone() for parameter in adapted_base_parameters(model)]
    unmerged = decode(model, *inputs, [IM_END], MAX_NEW_TOKENS)
    with adapters_merged(model, restore_exactly=True) as merged:
        assert merged and not torch.equal(adapted_base_parameters(model)[0], before[0])
        assert decode(model, *inputs, [IM_END], MAX_NEW_TOKENS) == unmerged
    assert all(torch.equal(parameter, saved) for parameter, saved in zip(adapted_base_parameters(model), before))
    assert not any(layer.merged for layer in model.modules() if hasattr(layer, "merged_adapters"))
    assert decode(model, *inputs, [IM_END], MAX_NEW_TOKENS) == unmerged


def test_prompt_tuning_answers_through_generate(tiny_model_dir, tokenizer):
    """Virtual tokens cannot be merged nor served by the loop: ``generate`` answers, unchanged."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    assert not can_decode(model)
    with adapters_merged(model, restore_exactly=True) as merged:
        assert not merged
        answers = generate_answers(model, tokenizer, *left_padded(prompt_ids(tokenizer)),
                                   GenerationSettings(max_new_tokens=4))
    assert len(answers) == len(PROMPTS) and all(isinstance(answer, str) for answer in answers)


def test_byte_prompts_are_what_the_tests_think(tokenizer):
    assert prompt_ids(tokenizer)[2] == byte_ids("ab")


def test_types_generated_alike_share_answering_batches(tiny_model_dir, tmp_path):
    """Every greedy type shares one group; code (sampled by default) keeps its own; one generate
    call per setting inside a batch."""
    from datamodules.sft_datamodule import SFTDataModule
    from modules.generation.plan import GenerationPlan, GenerationSettings, generate_for_rows

    plan = GenerationPlan()  # the defaults: code-generate sampled 3 times, the rest greedy

    class Trainer:
        lightning_module = type("Module", (), {"generation": plan})()
    datamodule = SFTDataModule(tokenizer_name_or_path=str(tiny_model_dir))
    types = ["choice", "code-generate", "math", "generic-generate", "code-generate"]
    assert datamodule.answer_groups(types) == types  # no module: a group per type
    datamodule.trainer = Trainer()
    groups = datamodule.answer_groups(types)
    assert groups[0] == groups[2] == groups[3] != groups[1] == groups[4]

    calls = []

    def fake_generate(model, tokenizer, input_ids, attention_mask, settings, max_rows=None):
        calls.append((input_ids[:, -1].tolist(), settings))
        return [f"answer {int(i)}" for i in input_ids[:, -1]]
    import modules.generation.plan as generation
    real, generation.generate_answers = generation.generate_answers, fake_generate
    try:
        batch = {"types": ["choice", "math", "code-generate"], "prompt_ids": torch.tensor([[1], [2], [3]]),
                 "prompt_attention_mask": torch.ones(3, 1, dtype=torch.long)}
        plan.per_type["code-generate"] = GenerationSettings(num_samples=1, do_sample=True)
        answers = generate_for_rows(None, None, batch, plan, [0, 1, 2])
    finally:
        generation.generate_answers = real
    assert answers == ["answer 1", "answer 2", "answer 3"]
    assert [ids for ids, _ in calls] == [[1, 2], [3]]  # choice and math together, code apart
