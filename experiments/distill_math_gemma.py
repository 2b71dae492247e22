"""Sequence-level distillation across model families and tokenizers: Gemma 3 270M (a base model)
fine-tuned on arithmetic questions teaches SmolLM2-135M through its answers to questions the
student never saw answered, against the same student trained on the true answers.

Run (one command; every stage's workdir is kept under --workdir, and rerunning resumes):
  ftjax pipeline experiments/distill_math_gemma.py --workdir workdirs/distill_math --record

Data: asset math-add-sub (DeepMind's arithmetic add / sub questions). Its train file is split
in two halves by a seeded permutation: A (900 questions) trains the teacher; B (900) are the
questions the students train on. Every model is scored by exact match of its greedy answer on
the asset's held-out validation and test questions (100 each), which no stage trains on.
Prompts are "Question: <q>\\nAnswer: " (no chat template: the teacher is a base model), the
answer the target.

Stages: `teacher` (Gemma 3 270M + LoRA on A); before the students, its greedy answers to B are
written as a data source (ftjax.generate.targets, `teacher_answers.jsonl`) beside B with its
true answers (`true_answers.jsonl`); then for seeds 0, 1, 2 the arms
  seq_kd  SmolLM2-135M-Instruct + LoRA on B with the teacher's answers
  gold    the same on B with the true answers
(same prompts, same steps). The teacher's own exact match is its stage's figure.

Measured: not run yet.
"""

import json
from pathlib import Path

import ml_collections

from ftjax import assets
from ftjax.train.config import base_config
from ftjax.train.stages import Stage

TEACHER_STEPS = 150
STUDENT_STEPS = 150
SEEDS = (0, 1, 2)
TEMPLATE = "Question: {text}\nAnswer: "
FILES = {"seq_kd": "teacher_answers.jsonl", "gold": "true_answers.jsonl"}


def _common(model: str, steps: int):
    c = base_config()
    c.model.name = model
    c.head.kind = "lm"
    c.method = "lora"
    c.task.kind = "causal_lm"
    c.task.max_length = 64
    c.task.template = TEMPLATE
    c.task.packing = False
    c.sources.heldout = ml_collections.ConfigDict({  # never trained: the figures
        "kind": "local", "format": "jsonl", "train": False,
        "path": str(assets.resolve("math-add-sub").parent / "{split}.jsonl"),
        "prompt_column": "question", "text_column": "answer", "label_column": None,
        "max_eval_examples": 100, "generation_metrics": ("exact_match",),
    })
    c.data.source = "polarity"
    c.hooks = ("ftjax.generate.evaluation:GenerationEval",)
    c.eval_splits = ("validation", "test")
    c.steps = steps
    c.batch_size = 8
    c.eval_batch_size = 16
    c.eval_every = steps
    c.checkpoint_every = 50
    c.log_every = 10
    c.best_metric = ""  # no selection: the last step is the result
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = steps // 10
    c.optimizer.schedule = "cosine"
    return c


def _halves():
    """The asset's train file as A (train) and B (validation) halves."""
    return ml_collections.ConfigDict({
        "kind": "local", "format": "jsonl",
        "path": str(assets.resolve("math-add-sub").parent / "train.jsonl"),
        "prompt_column": "question", "text_column": "answer", "label_column": None,
        "split_fractions": (0.5, 0.5, 0.0), "split_seed": 0,
    })


def get_config(variant: str = "teacher"):
    if variant == "teacher":
        c = _common("gemma3-270m", TEACHER_STEPS)
        c.sources.halves = _halves()
        return c
    if variant not in FILES:
        raise ValueError(f"variant: teacher, {' or '.join(FILES)}; got {variant!r}")
    c = _common("smollm2-135m-instruct", STUDENT_STEPS)
    c.sources.answers = ml_collections.ConfigDict({  # the stage names the file
        "kind": "local", "format": "jsonl", "path": FILES[variant],
        "prompt_column": "prompt", "text_column": "text", "label_column": None,
        "split_fractions": (1.0, 0.0, 0.0),
    })
    return c


def get_stages():
    stages = [Stage("teacher", "teacher", ("seed=0",), group="teacher")]
    for seed in SEEDS:
        for arm, name in FILES.items():
            stages.append(Stage(f"{arm}_s{seed}", arm,
                                (f"seed={seed}", f"sources.answers.path={{root}}/{name}"),
                                group=arm, before="write_answers"))
    return stages


def write_answers(root: Path) -> None:
    """B's questions with the teacher's greedy answers and with the true ones (once)."""
    from ftjax.data import ROLES
    from ftjax.generate.targets import teacher_targets, write_targets
    from ftjax.train.restore import restore_run

    root = Path(root)
    if all((root / name).is_file() for name in FILES.values()):
        return
    exp, restored = restore_run(root / "teacher", roles=ROLES, full_precision=True)
    halves = next(s for s in exp.sources if s.name == "halves")
    answered = teacher_targets(exp.model, restored.state.params, exp.tokenizer, halves,
                               "validation", max_new_tokens=24)
    true = [dict(r) for r in halves.splits["validation"]]
    for name, rows in ((FILES["seq_kd"], answered), (FILES["gold"], true)):
        write_targets([{"prompt": r["prompt"], "text": r["text"]} for r in rows], root / name,
                      overwrite=True)
    (root / "answers.json").write_text(json.dumps({
        "questions": len(true), "teacher_step": int(restored.step),
        "teacher_answers_correct": sum(a["text"].strip() == t["text"].strip()
                                       for a, t in zip(answered, true))}, indent=1) + "\n")
