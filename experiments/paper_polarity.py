"""The paper comparison: every fine-tuning method on sentence polarity, two models (issue 8).

Run:
  make paper                                              # = the reduced sweep below
  ftjax sweep experiments/paper_polarity.py:reduced       # 2-core CPU, under an hour
  ftjax sweep experiments/paper_polarity.py:full          # one GPU
  ftjax sweep experiments/paper_polarity.py:reduced --plan          # list the runs
  ftjax sweep experiments/paper_polarity.py:reduced --report-only   # tables from finished runs

Task variants: all-MiniLM-L6-v2 with a new classification head (experiments/polarity_minilm.py)
and SmolLM2-135M-Instruct answering "positive" / "negative" in a chat turn, scored by its LM
head (experiments/polarity_smollm2.py). Per task and method: seed 0 at 3 learning rates, the
best on validation accuracy, then seeds 1 and 2 at it; test accuracy mean +- std over the 3
seeds. Writes experiments/results/paper_polarity_<variant>.{md,csv,json},
..._accuracy_vs_share.png and ..._accuracy_vs_wall_time.png.

Methods: all twelve of ftjax.optim.presets.METHODS (learning rates from
SUGGESTED_LEARNING_RATES); the sweep refuses names METHODS does not know.

Learning rates: SUGGESTED_LEARNING_RATES x (1/3, 1, 3) in the full variant; x (1, 3, 10) in the
reduced one, whose few steps need larger ones. SmolLM2's linear probe has its own grid: its
head starts at the zero-shot answer, and the suggested 1e-3 took validation accuracy below
chance in 8 steps (0.44 on 64 sentences), where 1e-4 for 6 steps gave 0.70.

Reduced variant (2-core CPU): MiniLM 30 steps of 16 sentences, max length 48, 200 validation
and 200 test sentences; SmolLM2 6 steps of 4 at max length 64 (28 tokens of sentence), 64 and
64. Measured with this machinery (`--set "methods=('full','linear_probe','bitfit','lora')"
--set seeds=2 --set "lr_factors=(1.0,)"`, XLA_FLAGS as `make paper` sets them), wall time of a
search run (its steps compiled) / a seed run (compiled steps from the cache, test only):

  seconds        minilm    smollm2
  full           79 / 59   91 / 53
  linear_probe   32 / 19   45 / 26
  bitfit         46 / 30   63 / 34
  lora           42 / 30   60 / 49

Counting llrd and gradual_unfreeze as full, top_layers as bitfit and the five PEFT methods as
lora, 12 methods x (3 search + 2 seed runs) add up to 2,711 s (MiniLM) + 3,506 s (SmolLM2) =
104 min. Other jobs shared the two cores then (load average 6 to 7): the full fine-tuning step
of MiniLM took 1.48 s against 0.65 s on the idle machine (README), so the same sweep on the idle
machine should take about 104 / 2.3 = 45 min. The 7 methods there today: 65 min / 2.3 = 28 min.
"""

import ml_collections

METHODS = ("full", "linear_probe", "top_layers", "llrd", "gradual_unfreeze", "bitfit", "lora",
           "houlsby", "pfeiffer", "prefix", "prompt", "ia3")


def _task(experiment: str, overrides=(), method_overrides=None) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "experiment": experiment, "overrides": tuple(overrides),
        "method_overrides": ml_collections.ConfigDict(method_overrides or {}),
    })


def get_config(variant: str = "reduced") -> ml_collections.ConfigDict:
    if variant not in ("reduced", "full"):
        raise ValueError(f"unknown variant {variant!r}; use paper_polarity.py:reduced or :full")
    c = ml_collections.ConfigDict()
    c.name = f"paper_polarity_{variant}"
    c.methods = METHODS
    c.seeds = 3
    c.lr_factors = (1.0, 3.0, 10.0) if variant == "reduced" else (1 / 3, 1.0, 3.0)
    c.results_dir = "results"  # experiments/results
    c.workdir = f"workdirs/paper_polarity_{variant}"
    c.keep_checkpoints = False  # record each run's delta size, then free the disk
    c.compilation_cache = True
    c.method_overrides = ml_collections.ConfigDict({"llrd": ("method_args.decay=0.8",)})
    c.tasks = ml_collections.ConfigDict()
    if variant == "reduced":
        # One evaluation at the end (validation picks the rate; test reports), per-step timing.
        once = lambda steps: (f"steps={steps}", f"eval_every={steps}",  # noqa: E731
                              f"checkpoint_every={steps}", "log_every=1", "best_metric=",
                              f"optimizer.warmup_steps={max(steps // 10, 1)}")
        c.tasks.minilm = _task("polarity_minilm.py", (
            *once(30), "batch_size=16", "task.max_length=48", "eval_batch_size=100",
            "data.max_eval_examples=200",
        ), {"gradual_unfreeze": ("method_args.unfreeze_every=3",)})
        # SmolLM2 costs ~10x MiniLM per token on a CPU: few short steps, small eval sets, and
        # scanned layers (one compiled block instead of 30: a third of the compile time).
        c.tasks.smollm2 = _task("polarity_smollm2.py", (
            *once(6), "batch_size=4", "task.max_length=64", "eval_batch_size=32",
            "data.max_eval_examples=64", "model.scan_layers=True",
        ), {"gradual_unfreeze": ("method_args.unfreeze_every=1",)})
        c.tasks.smollm2.learning_rates = ml_collections.ConfigDict(
            {"linear_probe": (3e-5, 1e-4, 3e-4)})
        c.isolate = False  # in one process: each checkpoint is read once (reuse_checkpoints)
    else:
        # The experiments' own schedules (400 steps, evaluations every 100 keeping the best),
        # whole validation and test splits.
        c.tasks.minilm = _task("polarity_minilm.py", (), {
            "gradual_unfreeze": ("method_args.unfreeze_every=40",)})
        c.tasks.smollm2 = _task("polarity_smollm2.py", (), {
            "gradual_unfreeze": ("method_args.unfreeze_every=10",)})
        c.tasks.smollm2.learning_rates = ml_collections.ConfigDict(
            {"linear_probe": (1e-5, 3e-5, 1e-4)})
        c.isolate = True  # one process per run: per-run peak GPU memory
    return c
