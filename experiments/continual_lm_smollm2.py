"""Continual learning of a language model over domains in sequence: SmolLM2-135M-Instruct trained
on State of the Union speeches, then software licences, then Python source code, each stage from
the one before, every domain's perplexity measured after each stage; what each method against
forgetting keeps, and at what cost. The language-model half of the continual-learning suite
(experiments/continual_suite.py holds the MiniLM task sequence).

Run (one command; every stage's workdir is kept under --workdir, and rerunning resumes):
  python -m ftjax.assets fetch smollm2-135m-instruct sotu spdx-licenses python-code
  ftjax pipeline experiments/continual_lm_smollm2.py --workdir workdirs/continual_lm --record

writes experiments/results/continual_lm_smollm2.json (every stage's figures),
continual_lm_smollm2.md (per arm: mean final perplexity, backward transfer, forgetting, forward
transfer, over seeds) and continual_lm_smollm2.png (each arm's perplexity matrix P[i][j],
domain j after stage i, seed mean).

Data (one causal-LM task, three sources, one .txt file per document, packed whole into rows of
256 tokens): speeches = asset sotu (233 speeches), licences = asset spdx-licenses (687 distinct
licence texts), code = asset python-code (682 modules of sympy 1.4); each split 90/5/5 by
document with seed 0; evaluated on 4 / 16 / 8 documents of validation and of test. Every stage
trains one domain (the others `train = False`, evaluated only) for STEPS steps of 4 rows (full
fine-tuning, AdamW 5e-5, linear decay, 10% warm-up; adapters: LoRA r 8 on q / v, 5e-4), and
evaluates every domain at its end; the first stage also at step 0 (the model as it ships:
forward transfer's reference). Scores are each domain's test perplexity (lower is better, so a
positive backward transfer is forgetting). Nothing is selected: a stage hands its last weights on.
Arms (seeds 0, 1, 2):
  naive     full fine-tuning, each stage from the previous one
  ewc       + EWC at weight 1, the Fisher (the empirical one, over the packed rows of 8 train
            documents of the stage's domain, about 200 rows, one row per gradient pass: 135M
            per-row gradients side by side would need ~0.5 GB each) estimated after each stage
            and added to the earlier ones (online EWC, decay 1)
  l2sp      + L2-SP toward the previous stage's weights, coefficient 0.01
  replay1   + experience replay: a reservoir of 1% of all train documents (14), each entering
            when its first piece is trained on, continued over the stages; each later stage
            draws a fifth of its rows from the documents it holds (packed like the others)
  replay5   the same with 5% (72)
  lwf       + LwF: the previous stage's model's next-token distribution kept on the new
            domain's text (T = 2, weight 1)
  adapters  a new LoRA adapter per domain on the frozen base: no forgetting by design (each
            domain scored with its own adapter), the upper reference
  joint     the three domains in one run of 3 x STEPS steps (proportional mixing): the
            multi-task reference (no sequence; its row is its final perplexities)

Not measured yet: no stage of this pipeline has run (2026-12-08; on the 2-core CPU of the other
SmolLM2 runs one arm and seed, three stages, takes an estimated 30-40 minutes, the whole
pipeline about 12 hours); the table is written by the command above.
"""

from pathlib import Path

import ml_collections

from ftjax.sweep.continual_report import sequence_report
from ftjax.train.config import base_config
from ftjax.train.continual import replay_overrides
from ftjax.train.fisher import estimate_fisher_chain
from ftjax.train.stages import Stage

SEQUENCE = ("speeches", "licences", "code")
ASSETS = {"speeches": ("sotu", 4), "licences": ("spdx-licenses", 16), "code": ("python-code", 8)}
SEEDS = (0, 1, 2)
STEPS = 60
ARMS = ("naive", "ewc", "l2sp", "replay1", "replay5", "lwf", "adapters", "joint")
SEQUENTIAL = tuple(a for a in ARMS if a != "joint")
CAPACITY = {"replay1": 14, "replay5": 72}  # 1% / 5% of the 1,441 train documents
REPLAY_SHARE = 0.2  # of a later stage's rows
FISHER_EXAMPLES = 8  # documents; each gives its packed rows


def _source(domain: str, trained: bool) -> dict:
    asset, evaluated = ASSETS[domain]
    return {"kind": "local", "format": "txt", "txt_unit": "document",
            "path": f"{asset}/*.txt", "label_column": None,  # fetched when first read
            "split_fractions": (0.9, 0.05, 0.05), "split_seed": 0,
            "max_eval_examples": evaluated, "train": trained}


def get_config(variant: str = "naive_speeches"):
    arm, _, domain = ("joint", "", "") if variant == "joint" else variant.rpartition("_")
    if arm not in ARMS or (arm != "joint" and domain not in SEQUENCE):
        raise ValueError(f"variant: <arm>_<domain> (or joint), arm one of {ARMS}, domain one "
                         f"of {SEQUENCE}; got {variant!r}")
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.head.kind = "lm"
    c.task.kind = "causal_lm"
    c.task.max_length = 256
    trained = set(SEQUENCE) if arm == "joint" else {domain}
    c.sources = ml_collections.ConfigDict({d: _source(d, d in trained) for d in SEQUENCE})
    c.steps = STEPS * (len(SEQUENCE) if arm == "joint" else 1)
    c.batch_size = 4
    c.eval_batch_size = 8
    c.eval_every = c.steps
    c.checkpoint_every = c.steps
    c.log_every = 10
    c.eval_splits = ("validation", "test")
    c.eval_at_start = arm == "joint" or domain == SEQUENCE[0]
    c.best_metric = ""  # a stage hands its last weights on
    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = c.steps // 10
    c.optimizer.schedule = "linear"
    c.data.mixing = "proportional" if arm == "joint" else "fixed"
    if arm == "adapters":
        c.method = "lora"
        c.optimizer.learning_rate = 5e-4
    if arm == "l2sp":
        c.regularizer.l2sp = 0.01
    if arm in CAPACITY:
        c.replay.capacity = CAPACITY[arm]
    return c


def _name(arm: str, seed: int, index: int) -> str:
    return f"{arm}_s{seed}_{index}{SEQUENCE[index]}"


def _stage(arm: str, seed: int, index: int) -> Stage:
    domain = SEQUENCE[index]
    overrides = [f"seed={seed}"]
    previous = _name(arm, seed, index - 1) if index else None
    before = None
    if previous is not None and arm == "ewc":
        overrides += [f"losses.ewc.fisher='{{root}}/{previous}/fisher.safetensors'",
                      "losses.ewc.weight=1.0"]
        before = "fisher_of_previous"
    if previous is not None and arm == "lwf":
        overrides += [f"losses.lwf.teacher='{{root}}/{previous}'", "losses.lwf.temperature=2.0"]
    if previous is not None and arm in CAPACITY:
        overrides += replay_overrides(previous, domain, SEQUENCE[:index], REPLAY_SHARE)
    return Stage(_name(arm, seed, index), f"{arm}_{domain}", tuple(overrides),
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
    for seed in SEEDS:
        estimate_fisher_chain([Path(root) / _name("ewc", seed, i)
                               for i in range(len(SEQUENCE) - 1)],
                              max_examples=FISHER_EXAMPLES, seed=seed, rows_per_pass=1)


# ---- the table and the matrices -------------------------------------------------------------


def report(record: dict, stem: Path) -> list[Path]:
    return sequence_report(
        record, stem, arms=SEQUENTIAL, seeds=SEEDS, tasks=SEQUENCE, metric="perplexity",
        stage_name=_name, joint_name=lambda seed: f"joint_s{seed}", own_model_arms=("adapters",),
        average_label="mean final perplexity", digits=2, cell_digits=1, lower_is_better=True,
        note="Test perplexity per domain (speeches, licences, code), lower is better; mean over "
             "the three after the last stage; backward transfer > 0 and forgetting > 0 are "
             "perplexity lost on earlier domains.")
