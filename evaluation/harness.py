"""Standard benchmarks through lm-evaluation-harness: a loaded model scored on tasks, results as JSON and Markdown.

``sft eval`` (``lightning_app/eval.py``) loads the model (``evaluation/harness_source.py``) and calls
``evaluate_model``. lm-eval is an optional extra (``pip install -e '.[eval]'``, lm-eval 0.4.13); it is
imported only here, only when asked. Tasks are named three ways:

- lm-eval's own by name (``hellaswag``, ``arc_easy``, ...): their data comes from the Hugging Face hub,
  so where it cannot be reached the task fails with one line saying so;
- a task YAML file in lm-eval's format, or a folder of them (``--include-path``): with
  ``dataset_path: json`` and ``dataset_kwargs: {data_files: ...}`` it reads a local jsonl, offline;
- the shipped ``sft_bundled`` tasks (``evaluation/harness_tasks/``), over the bundled test file.

Each task is loaded before any is run, so a missing dataset stops the command before model time is spent.
"""

import functools
import importlib.util
import json
import logging
import time
from pathlib import Path

from core.files import write_text_atomically
from core.tables import markdown_table

SHIPPED_TASKS = Path(__file__).parent / "harness_tasks"
DEFAULT_TASKS = ["sft_bundled"]
RESULTS_JSON, RESULTS_MARKDOWN = "lm_eval_results.json", "lm_eval_results.md"
INSTALL_HINT = "pip install -e '.[eval]' (lm-eval 0.4.13)"


class HarnessError(RuntimeError):
    """lm-eval is missing, or a task cannot be found or loaded: said in one line."""


def require_lm_eval() -> None:
    """One line naming the extra, before a model is loaded for nothing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise HarnessError(f"sft eval runs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")


# 1. Tasks -----------------------------------------------------------------------------------------
def task_manager(names: list[str], include_paths: list[str]):
    """lm-eval's task index over the shipped tasks and the user's folders, and over lm-eval's own only
    when a name needs them: indexing its thousands of YAML files takes ~14 s on two cores."""
    from lm_eval.tasks import TaskManager

    for folder in include_paths:
        if not Path(folder).is_dir():
            raise HarnessError(f"--include-path {folder}: no such folder (give a folder of lm-eval task YAML files)")
    folders = [str(SHIPPED_TASKS), *include_paths]
    local = TaskManager(include_path=folders, include_defaults=False)
    if all(name in local.all_tasks or Path(name).is_file() for name in names):
        return local
    return full_index(tuple(folders))


@functools.lru_cache(maxsize=1)
def full_index(folders: tuple[str, ...]):
    """lm-eval's own tasks and ``folders``: built once a process (the tests ask for it again)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders))


def load_tasks(manager, names: list[str]) -> list:
    """Every named task (or group, or YAML file) built with its data; one line for the first that cannot be."""
    loaded = []
    for name in names:
        try:
            loaded.append(manager.load([name]))
        except KeyError:
            raise HarnessError(f"--tasks {name}: no lm-eval task, group or YAML file has that name (lm-eval's own are "
                               f"listed by `lm-eval ls tasks`; the shipped ones are {', '.join(shipped_task_names())})") from None
        except (ConnectionError, OSError) as error:
            raise HarnessError(unreachable_data_message(name, error)) from None
    return loaded


def unreachable_data_message(name: str, error: Exception) -> str:
    """A hub task offline, or a local task's data file missing: which task, what was not found, what to do."""
    reason = " ".join(str(error).split())[:300]
    if isinstance(error, ConnectionError) or "Hub" in reason:
        return (f"--tasks {name}: its dataset could not be fetched from the Hugging Face hub ({reason}); run where the "
                "hub is reachable (or the dataset is in the HF cache), or give a local task YAML with "
                "dataset_path: json and data_files (docs/eval.md)")
    return f"--tasks {name}: its data could not be read ({reason}); a local task's data_files are relative to the current folder"


def shipped_task_names() -> list[str]:
    return sorted(path.stem for path in SHIPPED_TASKS.glob("*.yaml"))


# 2. Running ---------------------------------------------------------------------------------------
def prepare_tasks(names: list[str], include_paths: list[str] = ()) -> tuple:
    """lm-eval's task manager and the named tasks built with their data, before a model is loaded."""
    require_lm_eval()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines drown the result
    manager = task_manager(names, list(include_paths))
    return manager, [item for bundle in load_tasks(manager, names) for item in task_objects(bundle)]


def evaluate_model(model, tokenizer, prepared: tuple, limit: float | None = None, batch_size: int | str = 8,
                   num_fewshot: int | None = None, chat_template: bool = True) -> dict:
    """lm-eval's ``simple_evaluate`` on a loaded model and ``prepare_tasks``' tasks; its results and time.

    ``chat_template``: prompts are rendered with the tokenizer's chat template (as the model was tuned);
    a tokenizer without one gets plain prompts. ``limit``: the first N documents of each task (a
    fraction below 1). Greedy answers and fixed seeds: the same model gives the same numbers.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager, tasks = prepared
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
    with_template = chat_template and tokenizer.chat_template is not None
    started = time.perf_counter()
    results = simple_evaluate(lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                              log_samples=False, apply_chat_template=with_template,
                              fewshot_as_multiturn=with_template and bool(num_fewshot))
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["chat_template"] = with_template
    return results


def task_objects(bundle: dict) -> list:
    """What one ``load`` built, top level only: groups (their tasks and subgroups inside) and lone tasks."""
    children = {name for names in bundle["group_map"].values() for name in names}
    return [item for items in (bundle["groups"], bundle["tasks"]) for name, item in items.items() if name not in children]


# 3. Results ---------------------------------------------------------------------------------------
def result_rows(results: dict) -> list[list[str]]:
    """One row per task and metric: task, metric, value, standard error, documents scored."""
    rows = []
    samples = results.get("n-samples", {})
    for task, scores in results["results"].items():
        for key, value in scores.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = scores.get(f"{metric}_stderr,{filter_name}")
            rows.append([task, metric if filter_name == "none" else f"{metric} ({filter_name})", f"{value:.4f}",
                         f"{stderr:.4f}" if isinstance(stderr, float) else "n/a",
                         str(samples.get(task, {}).get("effective", "n/a"))])
    return rows


def results_markdown(results: dict, source: str) -> str:
    header = ["task", "metric", "value", "stderr", "documents"]
    return "\n".join([f"# lm-evaluation-harness: {source}", "",
                      f"lm-eval {results.get('lm_eval_version', '?')}, {results['seconds']} s", "",
                      markdown_table(header, result_rows(results)), ""])


def write_results(results: dict, source: str, out_dir: str | Path) -> tuple[Path, Path]:
    """``lm_eval_results.json`` (lm-eval's own results, and what was evaluated) and ``lm_eval_results.md``."""
    out_dir = Path(out_dir)
    kept = {key: value for key, value in results.items() if key not in ("samples", "pretty_env_info")}
    json_path = write_text_atomically(out_dir / RESULTS_JSON,
                                      json.dumps({"source": source, **kept}, indent=2, default=str) + "\n")
    markdown_path = write_text_atomically(out_dir / RESULTS_MARKDOWN, results_markdown(results, source))
    return json_path, markdown_path
