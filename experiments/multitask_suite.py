"""The multi-task suite: one task per run, all tasks in one run, an adapter per task,
HyperFormer and AdapterFusion, on the five real tasks of ftjax.data.task_suite with MiniLM.

Run (one command; every stage's workdir is kept under --workdir, and rerunning resumes):
  ftjax pipeline experiments/multitask_suite.py --workdir workdirs/multitask_suite --record

writes experiments/results/multitask_suite.json (every stage's figures, each arm's mean and
std over seeds), multitask_suite.md (the table) and multitask_suite.png (the plot).

Arms, each with seeds 0, 1, 2 (the seed sets the new weights and the data order):
  single       full fine-tuning of all-minilm-l6-v2 on one task (five runs per seed)
  multi_prop   full fine-tuning on all five tasks at once, tasks drawn in proportion to size
  multi_temp   the same with temperature sampling, T = 2 (p ~ n ** 0.5)
  adapters     one Pfeiffer adapter per task on the frozen base (adapter_per_task), T = 2
  hyperformer  HyperFormer++: one hypernetwork generates every task's Pfeiffer adapter (with
               task-conditional layer norms), T = 2
  fusion       AdapterFusion for the smallest task (topic, 1,700 train articles) over the five
               adapters of that seed's `adapters` run (topic's own included), frozen
Every run: batches of 16 rows cut to buckets of 32 / 48 / 64 tokens (rows grouped by length),
STEPS optimizer steps (AdamW, linear decay, 10% warm-up), one evaluation at the end on 200
validation rows per task and the test split (up to 500 rows per task). Learning rates are
the usual ones for each kind of method, not tuned: 1e-4 full fine-tuning, 1e-3 adapters,
HyperFormer and fusion.

This is a small-budget comparison (150 steps of 16 rows: a few thousand rows per run), sized
to run on a 2-core CPU; it measures the methods against each other at equal steps, not at
convergence.

Measured (2-core CPU, 2026-12-07, the command above, seeds 0, 1, 2, 6,105 s of training; the
full table in experiments/results/multitask_suite.md): mean test score over the five tasks
  single-task full FT 0.784 ± 0.014, multi-task full FT proportional 0.702 ± 0.023,
  multi-task T = 2 0.712 ± 0.010, adapter per task 0.686 ± 0.031, HyperFormer++ 0.480 ± 0.091;
  AdapterFusion on topic 0.942 ± 0.010 (topic alone: full FT 0.974, its adapter 0.897).
"""

import json
import statistics
from pathlib import Path

import ml_collections

from ftjax.data.task_suite import SUITE, suite_sources, suite_tasks
from ftjax.train.config import base_config
from ftjax.train.stages import Stage, mean_std

STEPS = 150
SEEDS = (0, 1, 2)
MAX_LENGTH = 64
SMALLEST = "topic"
ARMS = ("single", "multi_prop", "multi_temp", "adapters", "hyperformer", "fusion")
ARM_TITLES = {"single": "single-task full FT", "multi_prop": "multi-task full FT, proportional",
              "multi_temp": "multi-task full FT, T = 2", "adapters": "adapter per task (Pfeiffer)",
              "hyperformer": "HyperFormer++", "fusion": f"AdapterFusion ({SMALLEST} only)"}


def _common():
    c = base_config()
    c.model.name = "all-minilm-l6-v2"
    c.steps = STEPS
    c.batch_size = 16
    c.eval_batch_size = 100
    c.eval_every = STEPS
    c.checkpoint_every = STEPS
    c.log_every = 25
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = STEPS // 10
    c.optimizer.schedule = "linear"
    c.data.buckets = (32, 48, 64)
    c.data.group_by_length = 50
    return c


def _sources():
    return suite_sources(max_train=2000, max_eval=200, max_test=500)


def _single(c, task: str):
    entry = suite_tasks(MAX_LENGTH)[task]
    c.task.kind = entry["task"]["kind"]
    c.task.max_length = MAX_LENGTH
    for key, value in entry["head"].items():
        c.head[key] = value
    c.sources = ml_collections.ConfigDict({task: _sources()[task]})
    c.best_metric = "f1" if task == "ner" else "accuracy"
    return c


def get_config(variant: str = "multi_temp"):
    c = _common()
    arm, _, task = variant.partition("_") if variant.startswith("single") else (variant, "", "")
    if arm == "single":
        if task not in SUITE:
            raise ValueError(f"single_<task>, task one of {SUITE}; got {variant!r}")
        return _single(c, task)
    if arm == "fusion":
        c = _single(c, SMALLEST)
        c.method = "fusion"
        c.optimizer.learning_rate = 1e-3
        return c
    if arm not in ARMS:
        raise ValueError(f"unknown variant {variant!r}: one of {ARMS} (single_<task>)")
    c.tasks = ml_collections.ConfigDict(suite_tasks(MAX_LENGTH))
    c.sources = ml_collections.ConfigDict(
        {name: {**source, "task": name} for name, source in _sources().items()})
    c.best_metric = "score"
    c.data.mixing = "proportional" if arm == "multi_prop" else "temperature"
    c.data.temperature = 2.0
    if arm == "adapters":
        c.method = "pfeiffer"
        c.adapter_per_task = True
        c.optimizer.learning_rate = 1e-3
    elif arm == "hyperformer":
        c.method = "hyperformer"
        c.hyperformer.adapter_kind = "pfeiffer"
        c.adapter.norm = True
        c.optimizer.learning_rate = 1e-3
    return c


def get_stages():
    stages = []
    for seed in SEEDS:
        for_seed = ("seed=%d" % seed,)
        stages += [Stage(f"single_{task}_s{seed}", f"single_{task}", for_seed, group="single")
                   for task in SUITE]
        stages += [Stage(f"{arm}_s{seed}", arm, for_seed, group=arm)
                   for arm in ("multi_prop", "multi_temp", "adapters", "hyperformer")]
        adapters = ", ".join(f"'{t}={{root}}/adapters_s{seed}/adapters/{t}'" for t in SUITE)
        stages.append(Stage(f"fusion_s{seed}", "fusion",
                            (*for_seed, f"compose.adapters=({adapters},)"), group="fusion"))
    return stages


# ---- the table and the plot -------------------------------------------------------------

def _score(metrics: dict, task: str, prefix: str) -> float | None:
    name = "f1" if task == "ner" else "accuracy"
    return metrics.get(f"{prefix}/{name}")


def _arm_rows(record: dict) -> dict:
    """{arm: {seed: {"scores": {task: test score}, "trainable", "bytes_per_task", "wall_s"}}}."""
    metrics, runs = record["metrics"], record.get("runs", {})
    out: dict = {}
    for seed in SEEDS:
        for arm in ARMS:
            if arm == "single":
                names = [f"single_{t}_s{seed}" for t in SUITE]
                if not all(n in runs for n in names):
                    continue
                scores = {t: _score(metrics, t, f"single_{t}_s{seed}/test") for t in SUITE}
                trainable = sum(runs[n]["trainable"] for n in names)
                # One whole model stored per task.
                per_task = statistics.fmean(4 * runs[n]["total"] for n in names)
                wall = sum(runs[n]["wall_s"] for n in names)
            else:
                name = f"{arm}_s{seed}"
                if name not in runs:
                    continue
                run = runs[name]
                tasks = [SMALLEST] if arm == "fusion" else list(SUITE)
                prefix = (lambda t: f"{name}/test") if arm == "fusion" else \
                    (lambda t: f"{name}/test/{t}")
                scores = {t: _score(metrics, t, prefix(t)) for t in tasks}
                trainable, wall = run["trainable"], run["wall_s"]
                if arm in ("multi_prop", "multi_temp"):
                    per_task = 4 * run["total"] / len(SUITE)  # one model serves all five
                elif arm == "adapters":
                    per_task = statistics.fmean(a["bytes"] for a in run["adapter"].values())
                elif arm == "hyperformer":  # the hypernetwork is shared: its bytes over tasks
                    per_task = 4 * run["trainable"] / len(SUITE)
                else:  # fusion: its own fusion layers and head, beside the five adapters
                    per_task = run["adapter"]["bytes"] if run.get("adapter") else \
                        4 * run["trainable"]
            out.setdefault(arm, {})[seed] = {"scores": scores, "trainable": trainable,
                                             "bytes_per_task": per_task, "wall_s": wall}
    return out


def report(record: dict, stem: Path) -> list[Path]:
    """The suite's table (markdown) and plot, from the pipeline's record."""
    rows = _arm_rows(record)
    header = ["arm", "seeds", *SUITE, "mean", "trainable params", "stored MiB / task",
              "train time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}
    for arm in ARMS:
        seeds = rows.get(arm, {})
        if not seeds:
            continue
        cells = [ARM_TITLES[arm], str(len(seeds))]
        for task in SUITE:
            mean, std = mean_std([s["scores"].get(task) for s in seeds.values()])
            cells.append("-" if mean is None else f"{mean:.3f} ± {std:.3f}")
        means = [statistics.fmean(v for v in s["scores"].values() if v is not None)
                 for s in seeds.values()]
        mean, std = mean_std(means)
        summary[arm] = {"mean": mean, "std": std, "seeds": len(seeds)}
        first = next(iter(seeds.values()))
        cells += [f"{mean:.3f} ± {std:.3f}", f"{first['trainable']:,}",
                  f"{first['bytes_per_task'] / 2**20:.2f}",
                  f"{statistics.fmean(s['wall_s'] for s in seeds.values()):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Test scores (accuracy; entity F1 for NER), mean ± std over seeds; `mean` averages "
            "the tasks a run trains (fusion: topic only). Trainable parameters: all runs of an "
            "arm for one seed (single: the five runs). Stored MiB per task: what serving one "
            "more task costs beside the shared base (full fine-tuning: a whole model; "
            "multi-task: the shared model over five tasks; HyperFormer: the shared "
            "hypernetwork and heads over five tasks). Train time: one seed, "
            f"{record.get('machine', '')}.")
    markdown = stem.with_suffix(".md")
    markdown.write_text("\n".join(lines) + "\n\n" + note + "\n")
    written = [markdown]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, ax = plt.subplots(figsize=(8, 3.5))
    arms = [a for a in ARMS if a in summary]
    ax.bar(range(len(arms)), [summary[a]["mean"] for a in arms],
           yerr=[summary[a]["std"] for a in arms], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(arms)), [ARM_TITLES[a] for a in arms], rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel("mean test score")
    ax.set_ylim(0, 1)
    ax.set_title(f"Multi-task suite, all-minilm-l6-v2, {STEPS} steps, seeds {list(SEEDS)}")
    fig.tight_layout()
    plot = stem.with_suffix(".png")
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    stem.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return [*written, plot, stem.with_suffix(".summary.json")]
