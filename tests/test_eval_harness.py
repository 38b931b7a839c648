"""`sft eval`: lm-evaluation-harness on tiny models with local tasks (offline); bad input in one line.

The tests that run lm-eval skip without the eval extra; what is read before lm-eval (the source, the
results folder) and the run's model (adapter merged in memory) are tested either way.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from evaluation.harness_source import EvalSource, find_source, load_source, results_folder
from lightning_app.main import console_main, main
from tests.tiny import build_tokenizer

QUESTIONS = [("2+2=", ["4", "5", "9"], 0), ("3+3=", ["7", "6", "2"], 1), ("ab", ["c", "d"], 0), ("xy", ["z", "a"], 1)]


def write_local_task(folder: Path) -> Path:
    """lm-eval's own local-task format: a YAML reading a jsonl through ``dataset_path: json``."""
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps({"q": q, "options": o, "gold": g}) + "\n" for q, o, g in QUESTIONS))
    task = folder / "tiny_choice.yaml"
    task.write_text(f"task: tiny_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                    "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{options}}'\n"
                    "doc_to_target: gold\nmetric_list:\n  - metric: acc\n")
    return task


def tiny_run(tiny_model_dir, folder):
    """A run folder as ``sft fit`` leaves it for a LoRA run: ``adapter/`` (a non-zero update) and ``checkpoints/``."""
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.peft_config["default"].base_model_name_or_path = str(tiny_model_dir)
    model.save_pretrained(folder / "adapter")
    build_tokenizer().save_pretrained(folder / "adapter")
    (folder / "checkpoints").mkdir()
    return folder


@torch.no_grad()
def expected_accuracy(model, tokenizer) -> float:
    """lm-eval's ``acc`` by hand: the choice whose tokens (after " ") are likeliest after the question."""
    right = 0
    for question, options, gold in QUESTIONS:
        context = tokenizer(question).input_ids
        scores = []
        for option in options:
            continuation = tokenizer(" " + option).input_ids  # byte-level: the two split exactly there
            log_probs = model(torch.tensor([context + continuation])).logits[0].log_softmax(-1)
            scores.append(sum(log_probs[len(context) - 1 + i, token] for i, token in enumerate(continuation)))
        right += int(torch.stack(scores).argmax()) == gold
    return right / len(QUESTIONS)


def test_a_run_is_scored_as_its_adapter_on_the_base(tiny_model_dir, tmp_path):
    run = tiny_run(tiny_model_dir, tmp_path / "run")
    source = find_source(str(run))
    assert source == EvalSource("adapter", str(run / "adapter"), run) and results_folder(source, None) == run / "eval"
    model, _ = load_source(source)
    adapter_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "adapter").eval()
    ids = torch.tensor([build_tokenizer()("<|im_start|>user\nhi<|im_end|>\n").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, adapter_model(ids).logits)  # fp32 defaults: merged = adapter
        assert not torch.allclose(model(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits)


def test_local_task_scores_what_the_model_computes(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="sft eval needs the eval extra: pip install -e '.[eval]'")
    run = tiny_run(tiny_model_dir, tmp_path / "run")
    main(["eval", str(run), "--tasks", str(write_local_task(tmp_path)), "--no-chat-template", "--batch-size", "2"])
    results = json.loads((run / "eval" / "lm_eval_results.json").read_text())
    model, tokenizer = load_source(find_source(str(run)))
    assert results["results"]["tiny_choice"]["acc,none"] == pytest.approx(expected_accuracy(model, tokenizer))
    assert results["n-samples"]["tiny_choice"]["effective"] == len(QUESTIONS) and results["chat_template"] is False
    table = (run / "eval" / "lm_eval_results.md").read_text()
    assert "| tiny_choice | acc |" in table and table in capsys.readouterr().out


def test_shipped_tasks_read_the_bundled_test_file(tiny_model_dir, tmp_path):
    pytest.importorskip("lm_eval", reason="sft eval needs the eval extra: pip install -e '.[eval]'")
    from evaluation.harness import prepare_tasks

    _, tasks = prepare_tasks(["sft_bundled"])
    subtasks = {task.task_name: task for group in tasks for task in group.get_all_tasks()}
    assert sorted(subtasks) == ["sft_bundled_choice", "sft_bundled_math"]
    assert [len(task.test_docs()) for task in subtasks.values()] == [10, 10]
    main(["eval", str(tiny_model_dir), "--tasks", "sft_bundled_choice", "--limit", "2", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "lm_eval_results.json").read_text())
    assert results["n-samples"]["sft_bundled_choice"]["effective"] == 2 and results["chat_template"] is True


def run_console(argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", ["sft", *argv])
    with pytest.raises(SystemExit) as stopped:
        console_main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def test_bad_input_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    assert "--out is needed" in run_console(["eval", str(tiny_model_dir)], monkeypatch, capsys)
    assert "holds no model" in run_console(["eval", str(tmp_path)], monkeypatch, capsys)


def test_unknown_and_unreachable_tasks_are_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lm_eval", reason="sft eval needs the eval extra: pip install -e '.[eval]'")
    import lm_eval.api.task

    line = run_console(["eval", str(tiny_model_dir), "--out", str(tmp_path), "--tasks", "no_such_task"], monkeypatch, capsys)
    assert "--tasks no_such_task: no lm-eval task" in line

    (tmp_path / "tasks").mkdir()
    task = write_local_task(tmp_path / "tasks")
    (tmp_path / "tasks" / "questions.jsonl").unlink()
    line = run_console(["eval", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--tasks", str(task)], monkeypatch, capsys)
    assert f"--tasks {task}: its data could not be read" in line and "questions.jsonl" in line

    def offline(path, **_):  # what datasets raises without the hub (measured: after ~60 s of retries)
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval.api.task.datasets, "load_dataset", offline)
    line = run_console(["eval", str(tiny_model_dir), "--out", str(tmp_path), "--tasks", "hellaswag"], monkeypatch, capsys)
    assert "--tasks hellaswag" in line and "Rowan/hellaswag" in line and "hub" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "lm_eval_results.json").exists()


def test_missing_extra_is_named(monkeypatch):
    import evaluation.harness as harness

    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(harness.HarnessError, match=r"pip install -e '\.\[eval\]'"):
        harness.require_lm_eval()
