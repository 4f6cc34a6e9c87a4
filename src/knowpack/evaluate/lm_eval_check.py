"""Cross-check against lm-evaluation-harness: the same questions scored by lm-eval's own task definitions.

In:  a causal LM and its tokenizer, and the documents knowpack scores (`load_mmlu` docs with their
     few-shot exemplars, `load_truthfulqa` docs, `load_truthfulqa_gen` docs).
Out: `LmEvalResult`: lm-eval's scores under knowpack's metric names (``mmlu``, ``truthfulqa_mc1``,
     ``truthfulqa_mc2``, ``truthfulqa_gen_bleu_max`` …), every option's log-likelihood and every
     generated answer, in knowpack's document order.

lm-eval (optional extra ``knowpack[lm-eval]``) runs its shipped task YAMLs, `mmlu/default/
_default_template_yaml` and `truthfulqa/truthfulqa_{mc1,mc2,gen}.yaml`, through ``include:``; only where the
data comes from changes: local JSON copies of exactly the documents knowpack scored, so both tools see
the same questions and few-shot exemplars offline. Nothing of lm-eval's prompt or scoring is re-written.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from knowpack.errors import KnowpackError
from knowpack.evaluate.truthfulqa_gen import METRICS
from knowpack.lm import eval_mode

__all__ = ["LmEvalResult", "lm_eval_scores"]


@dataclass
class LmEvalResult:
    scores: dict[str, float]             # metric -> mean over documents
    logliks: dict[str, list[list[float]]]  # metric -> per document, per option log-likelihood
    answers: list[str] = field(default_factory=list)  # truthfulqa_gen: lm-eval's answer per document


def _lm_eval_tasks_dir() -> Path:
    try:
        import lm_eval.tasks
    except ImportError as err:
        raise KnowpackError("the lm-eval cross-check needs lm-evaluation-harness: "
                            "pip install 'knowpack[lm-eval]'") from err
    return Path(lm_eval.tasks.__file__).parent


def _write_jsonl(path: Path, rows: Sequence[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _mmlu_tasks(docs: Sequence[dict], folder: Path, tasks_dir: Path) -> dict[str, list[int]]:
    """One task YAML per subject; returns task name -> indices of its docs in `docs` (file order)."""
    by_subject: dict[str, list[int]] = {}
    for index, doc in enumerate(docs):
        by_subject.setdefault(doc["subject"], []).append(index)
    template = tasks_dir / "mmlu" / "default" / "_default_template_yaml"
    tasks = {}
    for subject, indices in by_subject.items():
        fields = ("question", "subject", "choices", "answer")
        test = _write_jsonl(folder / f"mmlu_{subject}_test.jsonl", [{k: docs[i][k] for k in fields} for i in indices])
        # lm-eval's `first_n` sampler takes the first exemplars of the dev split: exactly knowpack's.
        fewshot = docs[indices[0]]["fewshot"]
        dev = _write_jsonl(folder / f"mmlu_{subject}_dev.jsonl",
                           [{k: ex[k] for k in ("question", "choices", "answer")} | {"subject": subject}
                            for ex in fewshot] or [{k: docs[indices[0]][k] for k in fields}])
        name = f"knowpack_mmlu_{subject}"
        config = {
            "include": str(template), "task": name, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": test, "dev": dev}},
            "description": f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n",
            "num_fewshot": len(fewshot),
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        tasks[name] = indices
    return tasks


def _truthfulqa_tasks(docs: Sequence[dict], folder: Path, tasks_dir: Path) -> list[str]:
    data = _write_jsonl(folder / "truthfulqa.jsonl", [
        {"question": doc["question"], "mc1_targets": doc["mc1"], "mc2_targets": doc["mc2"]} for doc in docs])
    names = []
    for metric in ("mc1", "mc2"):
        name = f"knowpack_truthfulqa_{metric}"
        config = {"include": str(tasks_dir / "truthfulqa" / f"truthfulqa_{metric}.yaml"), "task": name,
                  "tag": [], "dataset_path": "json", "dataset_name": None,
                  "dataset_kwargs": {"data_files": {"validation": data}}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        names.append(name)
    return names


GEN_FIELDS = ("question", "best_answer", "correct_answers", "incorrect_answers")


def _truthfulqa_gen_task(docs: Sequence[dict], folder: Path, tasks_dir: Path) -> str:
    # The hub's generation rows, unprocessed: lm-eval's own `process_docs_gen` prepares them.
    data = _write_jsonl(folder / "truthfulqa_gen.jsonl", [{k: doc[k] for k in GEN_FIELDS} for doc in docs])
    name = "knowpack_truthfulqa_gen"
    config = {"include": str(tasks_dir / "truthfulqa" / "truthfulqa_gen.yaml"), "task": name, "tag": [],
              "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"validation": data}}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return name


def lm_eval_scores(model, tokenizer, *, mmlu_docs: Sequence[dict] = (), truthfulqa_docs: Sequence[dict] = (),
                   truthfulqa_gen_docs: Sequence[dict] = (), batch_size: int = 16) -> LmEvalResult:
    """Score the given documents with lm-eval's standard MMLU / TruthfulQA tasks on ``model``."""
    tasks_dir = _lm_eval_tasks_dir()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if truthfulqa_docs:
        for index, doc in enumerate(truthfulqa_docs):
            if doc["mc1"]["labels"][0] != 1:  # lm-eval's task YAML scores option 0 as the true one
                raise KnowpackError(f"truthfulqa doc {index}: lm-eval expects the true MC1 option first")
    with tempfile.TemporaryDirectory(prefix="knowpack-lm-eval-") as tmp:
        folder = Path(tmp)
        mmlu = _mmlu_tasks(mmlu_docs, folder, tasks_dir) if mmlu_docs else {}
        truthfulqa = _truthfulqa_tasks(truthfulqa_docs, folder, tasks_dir) if truthfulqa_docs else []
        generation = [_truthfulqa_gen_task(truthfulqa_gen_docs, folder, tasks_dir)] if truthfulqa_gen_docs else []
        if not mmlu and not truthfulqa and not generation:
            raise KnowpackError("lm_eval_scores: give mmlu_docs, truthfulqa_docs or truthfulqa_gen_docs")
        with eval_mode(model):  # HFLM switches the model to eval itself; the mode is given back here
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = simple_evaluate(model=lm, tasks=[*mmlu, *truthfulqa, *generation], task_manager=TaskManager(include_path=tmp, include_defaults=False),
                                  log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    samples = out["samples"]

    def per_doc(task: str) -> tuple[list[float], list[list[float]]]:
        rows = sorted(samples[task], key=lambda row: row["doc_id"])
        return [float(row["acc"]) for row in rows], [[float(r[0]) for r in row["filtered_resps"]] for row in rows]

    scores: dict[str, float] = {}
    logliks: dict[str, list[list[float]]] = {}
    if mmlu:
        acc = [0.0] * len(mmlu_docs)
        option_logliks: list[list[float]] = [[] for _ in mmlu_docs]
        for task, indices in mmlu.items():
            task_acc, task_logliks = per_doc(task)
            for index, value, values in zip(indices, task_acc, task_logliks):
                acc[index], option_logliks[index] = value, values
        scores["mmlu"] = sum(acc) / len(acc)  # every question counts once, as in knowpack
        logliks["mmlu"] = option_logliks
    for task in truthfulqa:
        metric = task.removeprefix("knowpack_")
        values, logliks[metric] = per_doc(task)
        scores[metric] = sum(values) / len(values)
    answers: list[str] = []
    for task in generation:
        rows = sorted(samples[task], key=lambda row: row["doc_id"])
        answers = [row["filtered_resps"][0] for row in rows]
        for metric in METRICS:
            scores[f"truthfulqa_gen_{metric}"] = sum(float(row[metric]) for row in rows) / len(rows)
    return LmEvalResult(scores, logliks, answers)
