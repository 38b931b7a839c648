"""Heads: routing of a mixed batch, the weighted multi loss, the choice head learning, and
options a record lacks never being predicted."""

from functools import partial

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig

from datamodules.sft_datamodule import SFTDataModule
from modules.heads import ChoiceHead, LMHead, MultiHead
from modules.heads import letters
from modules.peft.checkpoint_keys import trainable_names
from tests.factories import TYPED_RECORDS, quiet_trainer, sft_module, typed_batch, write_jsonl
from tests.tolerances import assert_close_normwise, reordering_bound

KEYWORD_LETTER = {"alpha": "A", "beta": "B", "gamma": "C", "delta": "D"}
SEPARABLE_CHOICES = [  # the gold letter follows from the prompt's keyword
    {"id": f"s{i}", "type": "choice", "prompt": f"{word} {i}",
     "choices": {"A": "one", "B": "two", "C": "three", "D": "four"}, "answer": letter}
    for i, (word, letter) in enumerate(list(KEYWORD_LETTER.items()) * 4)
]


def grad_norms(module, batch):
    module.zero_grad(set_to_none=False)
    for parameter in module.parameters():
        parameter.grad = torch.zeros_like(parameter)
    module.head.training_loss(module.model, batch)["loss"].backward()
    lm_head = module.model.get_output_embeddings().weight.grad.abs().sum()
    classifier = module.head.classifier.weight.grad.abs().sum()
    return float(lm_head), float(classifier)


def test_mixed_batch_routes_choice_records_to_the_choice_head(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead())
    choice_only = typed_batch(tiny_model_dir, tmp_path, [TYPED_RECORDS[1]], name="c.jsonl")
    others_only = typed_batch(tiny_model_dir, tmp_path, [TYPED_RECORDS[0], TYPED_RECORDS[2]], name="o.jsonl")
    mixed = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS, name="m.jsonl")
    lm_grad, classifier_grad = grad_norms(module, choice_only)
    assert lm_grad == 0.0 and classifier_grad > 0  # the letter "B" is no LM target for the multi head
    lm_grad, classifier_grad = grad_norms(module, others_only)
    assert lm_grad > 0 and classifier_grad == 0.0
    lm_grad, classifier_grad = grad_norms(module, mixed)
    assert lm_grad > 0 and classifier_grad > 0


def test_multi_loss_is_the_weighted_sum_of_its_parts(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead(lm_weight=0.3, choice_weight=2.0))
    losses = module.head.training_loss(module.model, typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS))
    torch.testing.assert_close(losses["loss"], 0.3 * losses["lm_loss"] + 2.0 * losses["choice_loss"])
    assert float(losses["lm_loss"].detach()) > 0 and float(losses["choice_loss"].detach()) > 0


@pytest.mark.numerics
def test_lm_loss_of_the_multi_head_covers_only_non_choice_records(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead())
    mixed = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS)
    others = typed_batch(tiny_model_dir, tmp_path, [r for r in TYPED_RECORDS if r["type"] != "choice"], name="o.jsonl")
    with torch.no_grad():
        mixed_lm = module.head.training_loss(module.model, mixed)["lm_loss"]
        others_lm = LMHead().training_loss(module.model, others)["loss"]
    # another batch (other padding) gives the same sums in another order (tests/tolerances.py, rule 2)
    assert_close_normwise(mixed_lm, others_lm, reordering_bound(torch.float32))


@pytest.mark.numerics
@pytest.mark.parametrize("peft_config", [None, LoraConfig(r=4, lora_alpha=8)])
def test_the_choice_head_starts_where_letter_scoring_is(tiny_model_dir, tmp_path, peft_config):
    """Warm start: before training the classifier gives the LM's own option-letter logits."""
    module = sft_module(tiny_model_dir, head=MultiHead(), peft_config=peft_config)
    batch = typed_batch(tiny_model_dir, tmp_path, SEPARABLE_CHOICES[:8])
    with torch.no_grad():
        option_logits = module.head._parts(module.model, batch).option_logits
        lm_logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    letter_ids = [ord(letter) for letter in "ABCDE"]  # byte tokenizer: a letter's id is its byte
    at_answer = lm_logits[torch.arange(8), batch["answer_position"]][:, letter_ids][:, :4]
    # the classifier's pass against the LM's: one forward each, rounded in its own order (rule 2)
    assert_close_normwise(option_logits[:, :4], at_answer, reordering_bound(torch.float32))
    assert torch.isinf(option_logits[:, 4]).all()  # option E is missing from every record
    random_start = sft_module(tiny_model_dir, head=MultiHead(init_from_letters=False))
    with torch.no_grad():
        random_logits = random_start.head._parts(random_start.model, batch).option_logits
    assert not torch.allclose(random_logits[:, :4], at_answer, atol=1e-2)


def test_choice_head_learns_a_separable_choice_set(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "choices.jsonl", SEPARABLE_CHOICES)
    module = sft_module(tiny_model_dir, head=ChoiceHead(), optimizer=partial(torch.optim.AdamW, lr=1e-2),
                        lr_schedule="constant")
    datamodule = SFTDataModule(train_path=path, val_path=path, format="typed", batch_size=8,
                               tokenizer_name_or_path=str(tiny_model_dir))
    trainer = quiet_trainer(max_steps=120, check_val_every_n_epoch=100)
    trainer.fit(module, datamodule)
    accuracy = trainer.validate(module, datamodule, verbose=False)[0]["val/choice_accuracy"]
    assert accuracy >= 14 / 16  # chance is 1/4; 1.0 for 4 of 5 seeds (the data order changes the pace)


def test_options_a_record_lacks_are_never_predicted(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead(max_choices=5))
    with torch.no_grad():
        module.head.classifier.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 50.0, 50.0]))  # C, D, E favoured
    two_options = [{"id": "x", "type": "choice", "prompt": "?", "choices": {"A": "a", "B": "b"}}]
    path = write_jsonl(tmp_path / "predict.jsonl", two_options)
    datamodule = SFTDataModule(predict_path=path, format="typed", tokenizer_name_or_path=str(tiny_model_dir))
    datamodule.setup("predict")
    batch = next(iter(datamodule.predict_dataloader()))
    assert module.head.predict(module.model, module.tokenizer, batch, module.generation) in (["A"], ["B"])
    masked = letters.mask_missing_options(torch.tensor([[0.0, 1.0, 9.0]]), torch.tensor([2]))
    assert letters.to_letters(masked) == ["B"]


def test_letter_scoring_answers_from_lm_logits(tiny_model_dir, tmp_path, tokenizer):
    module = sft_module(tiny_model_dir, head=LMHead(choices_by_letter_scores=True))
    record = TYPED_RECORDS[1]  # options A, B; gold B
    batch = typed_batch(tiny_model_dir, tmp_path, [record])
    labels = batch["labels"][0].tolist()
    answer_at = next(i for i, label in enumerate(labels) if label != -100) - 1  # found independently
    with torch.no_grad():
        logits = module.model(input_ids=batch["input_ids"]).logits[0, answer_at]
    letter_logits = logits[[ord("A"), ord("B")]]  # byte tokenizer: letter id = its byte
    expected_letter = "AB"[int(letter_logits.argmax())]
    values = module.head.evaluation(module.model, batch)
    assert float(values["letter_accuracy"].value) == float(expected_letter == record["answer"])
    assert module.head.predict(module.model, module.tokenizer, batch, module.generation) == [expected_letter]


def test_choice_head_is_trainable_and_saved_under_peft(tiny_model_dir):
    module = sft_module(tiny_model_dir, head=MultiHead(), peft_config=LoraConfig(r=2))
    names = trainable_names(module)
    assert {"head.classifier.weight", "head.classifier.bias"} <= names
    assert not any(name.endswith("q_proj.base_layer.weight") for name in names)


@pytest.mark.parametrize("peft_config", [PromptTuningConfig(num_virtual_tokens=3), LoraConfig(r=2)],
                         ids=["prompt-tuning", "lora"])
def test_multi_head_runs_with_peft_methods(tiny_model_dir, tmp_path, peft_config):
    module = sft_module(tiny_model_dir, head=MultiHead(), peft_config=peft_config)
    losses = module.head.training_loss(module.model, typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS))
    losses["loss"].backward()
    assert module.head.classifier.weight.grad.abs().sum() > 0
    assert torch.isfinite(losses["loss"])


def test_head_parameters_get_their_own_learning_rate(tiny_model_dir):
    from modules.training.optimizer import parameter_groups

    module = sft_module(tiny_model_dir, head=MultiHead(), peft_config=LoraConfig(r=2))
    groups = parameter_groups(module.named_parameters(), head_lr=0.05)
    head_group = [group for group in groups if group.get("lr") == 0.05]
    assert len(head_group) == 1
    assert {id(p) for p in head_group[0]["params"]} == {id(p) for p in module.head.parameters()}
    other = [p for group in groups if group.get("lr") != 0.05 for p in group["params"]]
    assert len(other) == sum(1 for n, p in module.named_parameters() if p.requires_grad and not n.startswith("head."))


@pytest.mark.parametrize("architecture", ["tiny_model_dir", "tiny_qwen_dir"])
def test_choice_answers_from_left_padded_prompts_equal_the_evaluation_path(architecture, request, tmp_path):
    """Predict (left-padded prompts) and evaluation (right-padded sequences) must see the same prompt end."""
    model_dir = request.getfixturevalue(architecture)
    module = sft_module(model_dir, head=MultiHead())
    records = [dict(record, prompt=record["prompt"] + " padding" * (i * 3)) for i, record in
               enumerate(SEPARABLE_CHOICES[:6])]  # different lengths: left padding differs per row
    batch = typed_batch(model_dir, tmp_path, records)
    with torch.no_grad():
        option_logits = module.head._parts(module.model, batch).option_logits
        predicted = module.head._choice_answers(module.model, batch)
    assert [predicted[row] for row in range(len(records))] == letters.to_letters(option_logits)
    with torch.no_grad():
        lm_logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        last_prompt = module.model(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_attention_mask"],
                                   position_ids=(batch["prompt_attention_mask"].cumsum(-1) - 1).clamp(min=0)).logits
    rows = torch.arange(len(records))
    # the prompt alone against the whole record: other lengths, other reduction orders (rule 2)
    assert_close_normwise(last_prompt[:, -1], lm_logits[rows, batch["answer_position"]], reordering_bound(torch.float32))
