"""Language-model distillation on a domain corpus: SmolLM2-135M-Instruct (30 blocks) teaches a
15-block copy of itself (every second block kept) on the State of the Union addresses;
perplexity of held-out speeches with and without KD.

Run (one command; every stage's workdir is kept under --workdir, and rerunning resumes):
  ftjax pipeline experiments/distill_lm_smollm2.py --workdir workdirs/distill_lm --record

writes experiments/results/distill_lm_smollm2.json.

Data and rows as experiments/dapt_clm_smollm2.py: speeches split 90/5/5 by speech (seed 0),
documents packed whole into rows of 256 tokens (4 of the 12 held-out speeches of each split
evaluated), movie-review sentences evaluated only (general text, never trained). The teacher is
the pretrained model as it is (its perplexity on the same held-out speeches is
dapt_clm_smollm2's step-0 figure: validation 30.24, test 36.18).

Arms, seeds 0, 1, 2 (the seed sets the data order; the student's weights are the teacher's
kept blocks): `lm` trains the 15-block student on the text alone (full fine-tuning, STEPS steps
of 4 rows, AdamW 1e-4 cosine); `kd` adds logit KD from the 30-block teacher run in the step
(T = 1, weight 1, over every target token). Each student is also evaluated before training
(eval_at_start: what dropping half the blocks costs).

Measured: not run yet.
"""

from pathlib import Path

import ml_collections

from ftjax.settings import import_experiment_file
from ftjax.train.stages import Stage

STEPS = 150
SEEDS = (0, 1, 2)
ARMS = ("lm", "kd")
TEACHER = "smollm2-135m-instruct"
KEPT = tuple(range(0, 30, 2))


def get_config(arm: str = "lm"):
    if arm not in ARMS:
        raise ValueError(f"arm one of {ARMS}, got {arm!r}")
    # The data, rows and evaluation of the DAPT experiment; the student and its schedule here.
    c = import_experiment_file(Path(__file__).with_name("dapt_clm_smollm2.py")).get_config()
    c.model.name = TEACHER
    c.model.keep_layers = KEPT
    c.method = "full"
    c.steps = STEPS
    c.eval_every = STEPS
    c.checkpoint_every = 50
    c.best_metric = ""  # no selection: the last step is the result
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = STEPS // 10
    c.optimizer.schedule = "cosine"
    if arm == "kd":
        c.losses = ml_collections.ConfigDict({"kd": {
            "kind": "kd", "teacher": TEACHER, "temperature": 1.0, "weight": 1.0}})
    return c


def get_stages():
    return [Stage(f"{arm}_s{seed}", arm, (f"seed={seed}",), group=arm)
            for seed in SEEDS for arm in ARMS]
