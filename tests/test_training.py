"""Training signal: loss normalisation under accumulation, what LoRA and full fine-tuning change,
and that the model actually learns."""

from functools import partial

import pytest
import torch
from peft import LoraConfig

from core.step_loss import StepTokenCounts
from datamodules.sft_datamodule import SFTDataModule
from tests.factories import QA_RECORDS, qa_datamodule, quiet_trainer, sft_module, write_jsonl
from tests.tolerances import FLOAT64_FIT, assert_close_normwise, reordering_bound

SGD = partial(torch.optim.SGD, lr=1.0)


def one_step_weights(model_dir, train_path, batch_size, accumulate):
    module = sft_module(model_dir, optimizer=SGD, lr_schedule="constant")
    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=accumulate, precision="64-true")
    torch.manual_seed(123)  # the batch sampler draws its order from this seed: the same 8 examples first
    trainer.fit(module, qa_datamodule(model_dir, train_path, batch_size))
    return {name: p.detach().clone() for name, p in module.model.named_parameters()}


@pytest.mark.numerics
def test_accumulating_4_micro_batches_of_2_equals_one_batch_of_8(tiny_model_dir, tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)
    initial = {n: p.detach().double() for n, p in sft_module(tiny_model_dir).model.named_parameters()}
    one_batch = one_step_weights(tiny_model_dir, train_path, batch_size=8, accumulate=1)
    accumulated = one_step_weights(tiny_model_dir, train_path, batch_size=2, accumulate=4)
    for name in one_batch:
        update_big = one_batch[name] - initial[name]
        update_accumulated = accumulated[name] - initial[name]
        # float64 (tests/tolerances.py, rule 1): reordering ~1e-16; a per-micro-batch mean would be off by 1e-2
        torch.testing.assert_close(update_accumulated, update_big, **FLOAT64_FIT, msg=name)
    assert any((one_batch[n] - initial[n]).abs().max() > 1e-4 for n in one_batch)  # it did move


@pytest.mark.numerics
def test_step_loss_is_mean_over_all_step_tokens_not_mean_of_micro_batch_means(tiny_model_dir, tmp_path):
    """The returned losses of a window add up to total summed loss / total trained tokens."""
    train_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)
    module = sft_module(tiny_model_dir)
    datamodule = qa_datamodule(tiny_model_dir, train_path, batch_size=2)
    datamodule.setup("fit")
    ordered = datamodule._loader(datamodule.training_examples("train"), 2, datamodule.collator_for_training())
    micro_batches = list(StepTokenCounts(ordered, accumulate_grad_batches=4))
    step_loss = sum(module.head.training_loss(module.model, b)["loss"] for b in micro_batches)

    summed, tokens, micro_means = 0.0, 0, []
    for batch in micro_batches:
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        token_losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="sum")
        summed, tokens = summed + token_losses, tokens + int((targets != -100).sum())
        micro_means.append(token_losses / int((targets != -100).sum()))
    # the module's kept-position loss against full logits here: one pass's reordering (tests/tolerances.py, rule 2)
    assert_close_normwise(step_loss, summed / tokens, reordering_bound(torch.float32))
    assert abs(float(step_loss) - float(sum(micro_means) / 4)) > 1e-4  # the trap differs measurably


@pytest.mark.numerics
def test_logged_step_loss_is_the_whole_step_not_its_last_micro_batch(tiny_model_dir, tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)

    def first_step_logged_loss(batch_size, accumulate):
        module = sft_module(tiny_model_dir, optimizer=SGD, lr_schedule="constant")
        trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=accumulate, log_every_n_steps=1,
                                precision="64-true")
        torch.manual_seed(123)  # the same 8 examples make up the first step of both runs
        trainer.fit(module, qa_datamodule(tiny_model_dir, train_path, batch_size))
        return float(trainer.callback_metrics["train/loss"]), float(trainer.callback_metrics["train/loss_epoch"])

    one_batch = first_step_logged_loss(batch_size=8, accumulate=1)
    accumulated = first_step_logged_loss(batch_size=2, accumulate=4)
    # float64 (tests/tolerances.py, rule 1); the last micro-batch's loss alone would differ by 1e-2 or more
    torch.testing.assert_close(accumulated, one_batch, **FLOAT64_FIT)


def test_lora_step_changes_adapters_and_leaves_base_weights_bit_identical(tiny_model_dir, tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)
    module = sft_module(tiny_model_dir, peft_config=LoraConfig(r=4, lora_alpha=8), optimizer=SGD)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    quiet_trainer(max_steps=2).fit(module, qa_datamodule(tiny_model_dir, train_path, batch_size=4))
    after = dict(module.model.named_parameters())
    lora_names = [n for n in before if "lora_" in n]
    assert lora_names and all(after[n].requires_grad for n in lora_names)
    assert any(not torch.equal(before[n], after[n]) for n in lora_names if "lora_B" in n)
    for name in before:
        if "lora_" not in name:
            assert torch.equal(before[name], after[name]), name
    targeted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in lora_names if "lora_A" in n}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_full_fine_tuning_changes_base_weights(tiny_model_dir, tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)
    module = sft_module(tiny_model_dir, optimizer=SGD)
    before = module.model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    quiet_trainer(max_steps=1).fit(module, qa_datamodule(tiny_model_dir, train_path, batch_size=4))
    assert not torch.equal(before, module.model.model.layers[0].self_attn.q_proj.weight)


@pytest.mark.parametrize("model_fixture", ["tiny_model_dir", "tiny_qwen_dir"])
def test_overfits_four_examples(model_fixture, request, tmp_path):
    model_dir = request.getfixturevalue(model_fixture)
    train_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS[:4])
    module = sft_module(model_dir, optimizer=partial(torch.optim.AdamW, lr=3e-3), lr_schedule="constant")
    datamodule = qa_datamodule(model_dir, train_path, batch_size=4)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    start = float(module.head.evaluation(module.model, batch)["loss"].value)
    quiet_trainer(max_steps=40).fit(module, datamodule)
    end = float(module.head.evaluation(module.model, batch)["loss"].value)
    assert end < 0.3 * start, (start, end)


def test_length_grouped_batches_cover_every_example_once_with_little_padding():
    from datamodules.batching import LengthGroupedBatchSampler

    lengths = [(i * 37) % 100 + 1 for i in range(64)]
    torch.manual_seed(0)
    batches = list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=0, window_batches=8))
    assert sorted(i for batch in batches for i in batch) == list(range(64))
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    assert padded < 1.15 * sum(lengths)  # shuffled batches of 8 would pad far more
    first_batch_lengths = [max(lengths[i] for i in batch) for batch in batches]
    assert first_batch_lengths != sorted(first_batch_lengths, reverse=True)  # batch order is shuffled


@pytest.mark.parametrize("grouped", [False, True])
def test_a_resumed_sampler_redraws_its_epoch_and_skips_the_trained_batches(grouped):
    from datamodules.batching import EpochBatchSampler, LengthGroupedBatchSampler

    def sampler(seed):
        return LengthGroupedBatchSampler(list(range(1, 41)), 4, seed) if grouped else EpochBatchSampler(40, 4, seed)

    straight = sampler(seed=3)
    epochs = [list(straight), list(straight), list(straight)]
    assert epochs[0] != epochs[1] != epochs[2]  # a new order every epoch
    torch.manual_seed(123)  # the global random state plays no part
    resumed = sampler(seed=99)
    resumed.load_state_dict(straight.state_dict())  # the seed comes from the checkpoint
    resumed.resume_at(epoch=1, batches_done=6)
    assert list(resumed) == epochs[1][6:]
    assert list(resumed) == epochs[2]  # then whole epochs again


@pytest.mark.parametrize("grouped", [False, True])
def test_data_parallel_ranks_split_each_epoch_without_sharing_a_batch(grouped):
    from datamodules.batching import EpochBatchSampler, LengthGroupedBatchSampler

    def sampler(**ranks):
        if grouped:
            return LengthGroupedBatchSampler(list(range(1, 43)), 4, 5, **ranks)
        return EpochBatchSampler(42, 4, 5, **ranks)

    single = list(sampler())  # 11 batches (the last one of 2)
    ranks = [list(sampler(num_replicas=3, rank=rank)) for rank in range(3)]
    assert [len(batches) for batches in ranks] == [3, 3, 3]  # equal steps; 2 batches sit this epoch out
    seen = [tuple(batch) for batches in ranks for batch in batches]
    assert len(set(seen)) == 9 and set(seen) <= {tuple(batch) for batch in single}


@pytest.mark.parametrize("epoch, global_step, expected", [
    (0, 0, (0, 0)),  # a fresh run
    (0, 2, (0, 6)),  # 2 steps of 3 batches into the first epoch
    (1, 5, (1, 3)),  # epochs of 10 batches = 4 steps (the last one short): 1 step into epoch 1
    (1, 8, (2, 0)),  # saved at the very end of epoch 1
])
def test_resume_position_follows_from_the_optimizer_step(epoch, global_step, expected):
    from datamodules.batching import resume_position

    assert resume_position(epoch, global_step, batches_per_epoch=10, accumulate=3) == expected


def test_evaluation_batches_hold_one_type_each_and_cover_every_row_once():
    from datamodules.batching import TypeGroupedBatchSampler

    types = ["choice", "math", "choice", "code-generate", "math", "choice"]
    batches = list(TypeGroupedBatchSampler(types, batch_size=2))
    assert sorted(row for batch in batches for row in batch) == list(range(len(types)))
    assert all(len({types[row] for row in batch}) == 1 for batch in batches)
    assert batches[0] == [0, 2]  # input order kept within a type


def test_validation_batches_go_in_length_order_and_pad_only_to_their_own_longest(tiny_model_dir, tmp_path):
    """QA_RECORDS' answers repeat 1-4 times in turn: input-order batches of 4 each hold a long one."""
    path = write_jsonl(tmp_path / "qa.jsonl", QA_RECORDS)
    datamodule = SFTDataModule(train_path=path, val_path=path, format="qa", batch_size=4, eval_batch_size=4,
                               tokenizer_name_or_path=str(tiny_model_dir))
    datamodule.setup("fit")
    lengths = [len(ids) for ids in datamodule.training_examples("val")["input_ids"]]
    batches = list(datamodule.val_dataloader())
    batch_lengths = [batch["attention_mask"].sum(dim=1).tolist() for batch in batches]
    assert [length for lengths_of in batch_lengths for length in lengths_of] == sorted(lengths)  # each once
    padded = sum(batch["input_ids"].numel() for batch in batches)
    in_input_order = sum(4 * max(lengths[start:start + 4]) for start in range(0, len(lengths), 4))
    assert padded == sum(4 * max(lengths_of) for lengths_of in batch_lengths) < in_input_order
