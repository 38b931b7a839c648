"""An answering batch's test loss runs slice by slice (``core.batch_layout.row_slices``): the
weighted means over the slices are the whole batch's, for the LM head and the multi head's parts.
(The multi head's ``loss`` is a weighted sum of its parts' means within a batch, so it depends on
how rows are batched, as it did before; its parts do not.)"""

import pytest
import torch

from core.batch_layout import row_slices
from modules.heads import LMHead, MultiHead
from tests.factories import TYPED_RECORDS, sft_module, typed_batch
from tests.tolerances import assert_close_normwise, reordering_bound


def test_row_slices_cut_every_per_row_field_and_keep_the_rest():
    batch = {"input_ids": torch.arange(10).view(5, 2), "ids": list("abcde"), "repeated_batch": False,
             "cu": torch.tensor(3)}
    slices = list(row_slices(batch, 2))
    assert [piece["ids"] for piece in slices] == [["a", "b"], ["c", "d"], ["e"]]
    assert torch.equal(slices[2]["input_ids"], torch.tensor([[8, 9]]))
    assert all(piece["repeated_batch"] is False and piece["cu"] is batch["cu"] for piece in slices)


@pytest.mark.numerics
@pytest.mark.parametrize("head", [LMHead, MultiHead], ids=["lm", "multi"])
def test_the_weighted_means_over_slices_are_the_whole_batchs(tiny_model_dir, tmp_path, head):
    records = TYPED_RECORDS + [{**record, "id": record["id"] + "-again"} for record in TYPED_RECORDS]
    batch = typed_batch(tiny_model_dir, tmp_path, records)
    module = sft_module(tiny_model_dir, head=head())
    module.eval()
    with torch.no_grad():
        whole = module.head.evaluation(module.model, batch)
        sums: dict[str, list[float]] = {}
        for piece in row_slices(batch, 2):
            for name, value in module.head.evaluation(module.model, piece).items():
                if value.count:
                    total = sums.setdefault(name, [0.0, 0])
                    total[0] += float(value.value) * value.count
                    total[1] += value.count
    assert sums.keys() == {name for name, value in whole.items() if value.count}
    for name, (weighted, count) in sums.items():
        if isinstance(module.head, MultiHead) and name == "loss":
            continue
        assert count == whole[name].count, name
        # slices of rows against the whole batch: other padding, other orders (tests/tolerances.py, rule 2)
        assert_close_normwise(torch.tensor(weighted / count), whole[name].value.double(),
                              reordering_bound(torch.float32), msg=name)


LONG_PROMPT_RECORDS = [{"id": "short", "type": "generic-generate", "prompt": "hi", "answer": "yo"},
                       {"id": "long-one", "type": "generic-generate", "prompt": "word " * 200 + "end?", "answer": "yo"}]


def long_prompt_datamodule(tiny_model_dir, tmp_path, truncation: str):
    from datamodules.sft_datamodule import SFTDataModule
    from tests.factories import write_jsonl

    return SFTDataModule(test_path=write_jsonl(tmp_path / "test.jsonl", LONG_PROMPT_RECORDS), format="typed",
                         max_length=64, truncation=truncation, tokenizer_name_or_path=str(tiny_model_dir),
                         cache_tokens=False)


def test_test_records_whose_prompt_fills_max_length_are_named_in_a_warning(tiny_model_dir, tmp_path):
    datamodule = long_prompt_datamodule(tiny_model_dir, tmp_path, "keep_start")
    with pytest.warns(UserWarning, match=r"test.jsonl: 1 test record\(s\) .* neither answered nor scored: long-one"):
        datamodule.setup("test")
        examples = datamodule.training_examples("test")
    assert examples["id"] == ["short"]


def test_by_default_a_long_test_prompt_loses_its_start_and_is_answered(tiny_model_dir, tmp_path, recwarn):
    datamodule = long_prompt_datamodule(tiny_model_dir, tmp_path, "keep_answer")
    datamodule.setup("test")
    examples = datamodule.training_examples("test").with_format(None)
    assert examples["id"] == ["short", "long-one"] and not [w for w in recwarn if "neither answered" in str(w.message)]
    long_one = examples[1]
    prompt = datamodule.tokenizer.decode(long_one["input_ids"][: long_one["answer_position"] + 1])
    assert len(long_one["input_ids"]) <= 64 and prompt.endswith("word end?<|im_end|>\n<|im_start|>assistant\n")
