"""Knowledge distillation on sentence polarity: a fully fine-tuned all-MiniLM-L6-v2 teacher, two
3-layer students, trained on labels alone and with three kinds of distillation.

Run (one command; every stage's workdir is kept under --workdir, and rerunning resumes):
  ftjax pipeline experiments/distill_polarity.py --workdir workdirs/distill_polarity --record

writes experiments/results/distill_polarity.json (every stage's figures, each arm's mean and
std over seeds) and distill_polarity.md (the table, with each model's inference examples/s
measured when the record is written).

Stages: the teacher (seed 0), then for seeds 0, 1, 2 and each student
  l3    paraphrase-MiniLM-L3-v2, a real 3-layer checkpoint (read from its ONNX export)
  l6x3  all-MiniLM-L6-v2 with blocks 0, 2 and 4 kept (a layer-dropped copy of the teacher)
the arms
  labels     cross-entropy on the labels alone
  kd         + logit KD (T = 2, weight 1) from the teacher, run in the step
  kd_all     + logit KD + hidden-state MSE (student blocks 0, 1, 2 against teacher blocks 1,
             3, 5) + attention and value-relation KL of the last blocks (MiniLM), weights 1
  kd_cached  kd with the teacher's class logits read from a teacher cache made once from the
             teacher run (ftjax teacher-cache) instead of run in the step
Every run: batches of 32 rows cut to buckets of 32 / 48 / 64 tokens, mean pooling, AdamW with
linear decay and 10% warm-up (teacher: 400 steps at 5e-5, as experiments/polarity_minilm.py;
students: STUDENT_STEPS steps at 1e-4), one evaluation at the end on the validation split
(which picks nothing: there is no selection) and the test split.

Measured (2-core CPU, 2026-12-07, the command above, seeds 0-2;
experiments/results/distill_polarity.md): teacher 0.8608 test accuracy; mean ± std over seeds
  l3:   labels 0.8021 ± 0.0047, kd 0.8040 ± 0.0043, kd_all 0.8002 ± 0.0028,
        kd_cached 0.8040 ± 0.0043
  l6x3: labels 0.8289 ± 0.0027, kd 0.8336 ± 0.0058, kd_all 0.8273 ± 0.0038,
        kd_cached 0.8336 ± 0.0058
inference 236 (l3) / 249 (l6x3) examples/s against the teacher's 125 (Intel Xeon, 2 cores).
"""

import time
from pathlib import Path

import ml_collections

from ftjax.generate.teacher_cache import cache_run_outputs
from ftjax.train.config import base_config
from ftjax.train.stages import Stage, mean_std

TEACHER_STEPS = 400
STUDENT_STEPS = 300
SEEDS = (0, 1, 2)
MAX_LENGTH = 64
STUDENTS = {"l3": "paraphrase-MiniLM-L3-v2", "l6x3": "all-MiniLM-L6-v2, blocks 0, 2, 4"}
ARMS = {"labels": "labels only", "kd": "logit KD", "kd_all": "logit + hidden + attention KD",
        "kd_cached": "logit KD, cached teacher"}
CACHE = "teacher_cache"


def _common(steps: int, learning_rate: float):
    c = base_config()
    c.model.name = "all-minilm-l6-v2"
    c.head.kind = "sequence"
    c.head.num_labels = 2
    c.head.pooling = "mean"
    c.task.kind = "classification"
    c.task.max_length = MAX_LENGTH
    c.data.source = "polarity"
    c.data.buckets = (32, 48, 64)
    c.data.group_by_length = 50
    c.steps = steps
    c.batch_size = 32
    c.eval_batch_size = 128
    c.eval_every = steps
    c.checkpoint_every = steps
    c.log_every = 50
    c.optimizer.learning_rate = learning_rate
    c.optimizer.warmup_steps = steps // 10
    c.optimizer.schedule = "linear"
    c.best_metric = ""  # nothing is selected: the last step is the result
    return c


def get_config(variant: str = "teacher"):
    if variant == "teacher":
        return _common(TEACHER_STEPS, 5e-5)
    student, _, arm = variant.partition("_")
    if student not in STUDENTS or arm not in ARMS:
        raise ValueError(f"variant: teacher or <student>_<arm> with student one of "
                         f"{list(STUDENTS)} and arm one of {list(ARMS)}; got {variant!r}")
    c = _common(STUDENT_STEPS, 1e-4)
    if student == "l3":
        c.model.name = "paraphrase-minilm-l3-v2"
    else:
        c.model.keep_layers = (0, 2, 4)
    losses = {}
    if arm != "labels":
        # The teacher (kd, kd_all) or its cache (kd_cached) is named by the stage: it lives
        # under the pipeline's root.
        losses["kd"] = {"kind": "kd", "temperature": 2.0, "weight": 1.0}
    if arm == "kd_all":
        losses["hidden"] = {"kind": "kd_hidden", "layers": ("0:1", "1:3", "2:5"),
                            "loss": "mse", "weight": 1.0}
        losses["attention"] = {"kind": "kd_attention", "layers": ("2:5",),
                               "relations": ("attention", "value"), "weight": 1.0}
    c.losses = ml_collections.ConfigDict(losses)
    return c


def get_stages():
    stages = [Stage("teacher", "teacher", ("seed=0",), group="teacher")]
    for seed in SEEDS:
        for student in STUDENTS:
            for arm in ARMS:
                overrides = [f"seed={seed}"]
                if arm in ("kd", "kd_all"):
                    overrides += [f"losses.{t}.teacher={{root}}/teacher"
                                  for t in (("kd",) if arm == "kd" else
                                            ("kd", "hidden", "attention"))]
                if arm == "kd_cached":
                    overrides.append(f"data.teacher_cache={{root}}/{CACHE}")
                stages.append(Stage(f"{student}_{arm}_s{seed}", f"{student}_{arm}",
                                    tuple(overrides), group=f"{student}_{arm}",
                                    before="make_teacher_cache" if arm == "kd_cached"
                                    else None))
    return stages


def make_teacher_cache(root: Path) -> Path:
    """The teacher run's class logits on every train record (once; a partial one continues)."""
    return cache_run_outputs(Path(root) / "teacher", Path(root) / CACHE, batch_size=128)


# ---- the table ------------------------------------------------------------------------------


def examples_per_second(variant: str, *, batch: int = 128, repeats: int = 5) -> float:
    """Inference throughput of a variant's model on this machine: forward passes over batches
    of `batch` rows of MAX_LENGTH tokens, jitted, compile excluded, best of `repeats`."""
    import jax
    import jax.numpy as jnp

    from ftjax.train.config import load_config
    from ftjax.train.experiment import build_experiment

    exp = build_experiment(load_config(f"{__file__}:{variant}", ["data.max_train_examples=64",
                                                                 "data.max_eval_examples=64"]))
    ids = jnp.full((batch, MAX_LENGTH), 1000, jnp.int32)
    ones = jnp.ones_like(ids)
    forward = jax.jit(lambda p: exp.model.apply(
        {"params": p}, ids, attention_mask=ones, positions=jnp.broadcast_to(
            jnp.arange(MAX_LENGTH), ids.shape), token_type_ids=jnp.zeros_like(ids),
        deterministic=True).logits)
    params = exp.params
    forward(params).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        forward(params).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return batch / best


def report(record: dict, stem: Path) -> list[Path]:
    metrics, runs = record["metrics"], record.get("runs", {})
    speed = {"teacher": examples_per_second("teacher"),
             **{s: examples_per_second(f"{s}_labels") for s in STUDENTS}}
    header = ["model", "arm", "seeds", "test accuracy", "parameters", "examples/s (CPU)",
              "vs teacher"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [("teacher", "all-MiniLM-L6-v2", "full fine-tuning", ["teacher"])]
    rows += [(s, STUDENTS[s], ARMS[a], [f"{s}_{a}_s{seed}" for seed in SEEDS])
             for s in STUDENTS for a in ARMS]
    for model, title, arm, names in rows:
        names = [n for n in names if n in runs]
        if not names:
            continue
        mean, std = mean_std([metrics.get(f"{n}/test/accuracy") for n in names])
        lines.append("| " + " | ".join([
            title, arm, str(len(names)), f"{mean:.4f} ± {std:.4f}",
            f"{runs[names[0]]['total']:,}", f"{speed[model]:.0f}",
            f"{speed[model] / speed['teacher']:.2f}x"]) + " |")
    gaps = [abs(metrics[f"{s}_kd_s{seed}/test/accuracy"]
                - metrics[f"{s}_kd_cached_s{seed}/test/accuracy"])
            for s in STUDENTS for seed in SEEDS
            if f"{s}_kd_s{seed}/test/accuracy" in metrics
            and f"{s}_kd_cached_s{seed}/test/accuracy" in metrics]
    note = (f"Test accuracy on the polarity test split (1,056 sentences), mean ± std over "
            f"seeds; parameters of the whole model; examples/s: a jitted forward pass over "
            f"batches of 128 x {MAX_LENGTH} tokens, best of 5, on {record.get('machine', '')}, "
            f"measured when this table was written.")
    if gaps:
        note += (f" Cached against on-the-fly teacher, same student and seed: largest test "
                 f"accuracy difference {max(gaps):.4f} over {len(gaps)} pairs.")
    markdown = stem.with_suffix(".md")
    markdown.write_text("\n".join(lines) + "\n\n" + note + "\n")
    return [markdown]
