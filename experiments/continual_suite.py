"""Continual learning over a task sequence: all-MiniLM-L6-v2 trained on polarity, then news
topic, then SMS spam, then Bible paraphrase pairs (ftjax.data.task_suite), one stage per task
from the stage before, every task evaluated after each stage; what each method against
forgetting keeps, and at what cost.

Run (one command; every stage's workdir is kept under --workdir, and rerunning resumes):
  ftjax pipeline experiments/continual_suite.py --workdir workdirs/continual_suite --record

writes experiments/results/continual_suite.json (every stage's figures), continual_suite.md (per
arm: average accuracy, backward transfer, forgetting, forward transfer, over seeds) and
continual_suite.png (each arm's accuracy matrix R[i][j], task j after stage i, seed mean).

Every stage: the four tasks' heads and sources in one multi-task model (ftjax.train.continual:
the stage's task trains, the others are evaluated only and their heads frozen), STEPS steps of
16 rows (AdamW 1e-4, linear decay, 10% warm-up; adapters 1e-3), buckets of 32 / 48 / 64 tokens,
one evaluation at the end on 200 validation rows and up to 500 test rows per task; the first
stage also evaluates at step 0 (the untrained heads: forward transfer's reference). Scores are
each task's test accuracy. Nothing is selected: a stage hands its last weights on.
Arms (seeds 0, 1, 2):
  naive        full fine-tuning, each stage from the previous one
  ewc          + EWC at the Bayesian weight 1 (the loss is a mean over examples and every
               task has up to 2,000, so the earlier tasks' summed Fisher enters unscaled); the
               Fisher (1,000 examples, the empirical one) is estimated after each stage and
               added to the earlier ones (online EWC, decay 1)
  ewc_x100     the same at weight 100 (the values EWC papers use are far above the Bayesian
               one; neither is tuned here)
  l2sp         + L2-SP toward the previous stage's weights, coefficient 0.01 (Li et al. 2018)
  replay1      + experience replay: a reservoir of 1% of all train examples (80), continued
               over the stages; each later stage draws a fifth of its rows from it
  replay5      the same with 5% (400)
  lwf          + LwF on the earlier tasks' heads (T = 2, weight 1)
  adapters     a new Pfeiffer adapter and head per task on the frozen base: no forgetting by
               design (each task scored with its own adapter), the upper reference
  joint        all four tasks in one run of 4 x STEPS steps (proportional mixing): the
               multi-task upper bound (no sequence; its row is its final scores)

Not measured yet: no stage of this pipeline has run (2026-12-07); the table is written by the
command above. The issue's second sequence (SmolLM2 over speeches, licences and code by
per-domain perplexity) needs the licence and code corpora as assets, not built yet.
"""

from pathlib import Path

import ml_collections

from ftjax.data.task_suite import suite_sources, suite_tasks
from ftjax.sweep.continual_report import sequence_report
from ftjax.train.config import base_config
from ftjax.train.continual import replay_overrides
from ftjax.train.fisher import estimate_fisher_chain
from ftjax.train.stages import Stage

SEQUENCE = ("polarity", "topic", "spam", "paraphrase")
SEEDS = (0, 1, 2)
STEPS = 150
MAX_LENGTH = 64
MAX_TRAIN = 2000
REPLAY_SHARE = 0.2  # of a later stage's rows
ARMS = ("naive", "ewc", "ewc_x100", "l2sp", "replay1", "replay5", "lwf", "adapters", "joint")
SEQUENTIAL = tuple(a for a in ARMS if a != "joint")
FISHER_EXAMPLES = 1000


def _capacity(arm: str) -> int:
    return {"replay1": 80, "replay5": 400}.get(arm, 0)


def get_config(variant: str = "naive_polarity"):
    arm, _, task = ("joint", "", "") if variant == "joint" else variant.rpartition("_")
    if arm not in ARMS or (arm != "joint" and task not in SEQUENCE):
        raise ValueError(f"variant: <arm>_<task> (or joint), arm one of {ARMS}, task one of "
                         f"{SEQUENCE}; got {variant!r}")
    c = base_config()
    c.model.name = "all-minilm-l6-v2"
    tasks = suite_tasks(MAX_LENGTH)
    c.tasks = ml_collections.ConfigDict({name: tasks[name] for name in SEQUENCE})
    sources = suite_sources(max_train=MAX_TRAIN, max_eval=200, max_test=500)
    trained = set(SEQUENCE) if arm == "joint" else {task}
    c.sources = ml_collections.ConfigDict({
        name: {**sources[name], "task": name, "train": name in trained} for name in SEQUENCE})
    c.steps = STEPS * (len(SEQUENCE) if arm == "joint" else 1)
    c.batch_size = 16
    c.eval_batch_size = 100
    c.eval_every = c.steps
    c.checkpoint_every = c.steps
    c.log_every = 25
    c.eval_splits = ("validation", "test")
    c.eval_at_start = arm == "joint" or task == SEQUENCE[0]
    c.best_metric = ""  # a stage hands its last weights on
    c.init_head = "keep"  # with init_from: every task's head from the stage before
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = c.steps // 10
    c.optimizer.schedule = "linear"
    c.data.buckets = (32, 48, 64)
    c.data.group_by_length = 50
    c.data.mixing = "proportional" if arm == "joint" else "fixed"
    if arm == "adapters":
        c.method = "pfeiffer"
        c.optimizer.learning_rate = 1e-3
    if arm == "l2sp":
        c.regularizer.l2sp = 0.01
    if _capacity(arm):
        c.replay.capacity = _capacity(arm)
    return c


def _name(arm: str, seed: int, index: int) -> str:
    return f"{arm}_s{seed}_{index}{SEQUENCE[index]}"


def _stage(arm: str, seed: int, index: int) -> Stage:
    task = SEQUENCE[index]
    overrides = [f"seed={seed}"]
    previous = _name(arm, seed, index - 1) if index else None
    before = None
    if previous is not None and arm.startswith("ewc"):
        overrides += [f"losses.ewc.fisher='{{root}}/{previous}/fisher.safetensors'",
                      f"losses.ewc.weight={100.0 if arm == 'ewc_x100' else 1.0}"]
        before = "fisher_of_previous"
    if previous is not None and arm == "lwf":
        earlier = ", ".join(f"'{t}'" for t in SEQUENCE[:index])
        overrides += [f"losses.lwf.teacher='{{root}}/{previous}'",
                      f"losses.lwf.tasks=({earlier},)", "losses.lwf.temperature=2.0"]
    if previous is not None and _capacity(arm):
        overrides += replay_overrides(previous, task, SEQUENCE[:index], REPLAY_SHARE)
    return Stage(_name(arm, seed, index), f"{arm}_{task}", tuple(overrides),
                 init_from=previous if arm != "adapters" else None, group=f"{arm}:{index}",
                 before=before)


def get_stages():
    stages = []
    for seed in SEEDS:
        for arm in SEQUENTIAL:
            stages += [_stage(arm, seed, i) for i in range(len(SEQUENCE))]
        stages.append(Stage(f"joint_s{seed}", "joint", (f"seed={seed}",), group="joint"))
    return stages


def fisher_of_previous(root: Path) -> None:
    """Before each EWC stage: the Fisher of the stages before it, each with its own earlier
    Fisher added (online EWC, decay 1). Each stage's file is written once (a rerun reuses it)."""
    for arm in ("ewc", "ewc_x100"):
        for seed in SEEDS:
            estimate_fisher_chain([Path(root) / _name(arm, seed, i)
                                   for i in range(len(SEQUENCE) - 1)],
                                  max_examples=FISHER_EXAMPLES, seed=seed)


# ---- the table and the matrices -------------------------------------------------------------


def report(record: dict, stem: Path) -> list[Path]:
    return sequence_report(
        record, stem, arms=SEQUENTIAL, seeds=SEEDS, tasks=SEQUENCE, metric="accuracy",
        stage_name=_name, joint_name=lambda seed: f"joint_s{seed}", own_model_arms=("adapters",),
        average_label="average accuracy", limits=(0.4, 1.0),
        note="Test accuracy per task (polarity, topic, spam, paraphrase); average over the four "
             "after the last stage; backward transfer < 0 is forgetting.")
