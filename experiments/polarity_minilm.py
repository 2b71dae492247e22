"""Fine-tune all-MiniLM-L6-v2 on the Pang & Lee sentence-polarity corpus (the embedded default).

Run:
  ftjax train experiments/polarity_minilm.py --workdir workdirs/polarity_minilm
  ftjax train experiments/polarity_minilm.py --workdir workdirs/probe --set method=linear_probe

Data: 10,568 rated movie-review sentences (zero ratings dropped), stratified seeded split
8,455 / 1,057 / 1,056 (train / validation / test). Full fine-tuning, 400 steps of 32 examples
(~1.5 epochs), AdamW lr 5e-5 linear decay with warmup, max length 64, mean pooling.
Expected: test accuracy >= 0.75 (measured figure in README.md).
"""

from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "all-minilm-l6-v2"
    c.head.kind = "sequence"
    c.head.num_labels = 2
    c.head.pooling = "mean"
    c.task.kind = "classification"
    c.task.max_length = 64
    c.data.source = "polarity"
    c.method = "full"
    c.steps = 400
    c.batch_size = 32
    c.eval_batch_size = 128
    c.eval_every = 100
    c.checkpoint_every = 200
    c.log_every = 20
    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = 40
    c.optimizer.schedule = "linear"
    return c
