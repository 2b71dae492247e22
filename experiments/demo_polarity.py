"""`make demo`: all-MiniLM-L6-v2 on sentence polarity, sized for a 2-core CPU in a few minutes.

Run:
  ftjax demo                      # full fine-tuning and a linear probe, then the result table
  ftjax train experiments/demo_polarity.py --workdir workdirs/demo/full

Same data and split as experiments/polarity_minilm.py (8,455 / 1,057 / 1,056), but shorter:
300 steps of 16 sentences (~0.6 epoch), max length 48 tokens (truncates 3.5% of sentences),
one evaluation at the end. Expected: full fine-tuning test accuracy >= 0.75 (measured figure
in README.md).
"""

from pathlib import Path

from ftjax.settings import import_config_file


def get_config():
    # experiments/polarity_minilm.py with a shorter schedule: same model, data, split and head.
    c = import_config_file(Path(__file__).with_name("polarity_minilm.py"))
    c.task.max_length = 48
    c.steps = 300
    c.batch_size = 16
    c.eval_every = 300
    c.checkpoint_every = 300
    c.log_every = 25
    c.best_metric = ""  # one evaluation at the end: nothing to select
    c.optimizer.warmup_steps = 30
    return c
