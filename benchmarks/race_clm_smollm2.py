"""ftjax's side of the causal-LM race (benchmarks/races.py, `clm_lora`): SmolLM2-135M-Instruct
with LoRA (r 8, alpha 16, q_proj / v_proj) continuing pretraining on State of the Union
speeches, documents packed whole into rows of 256 tokens.

The recipe of experiments/dapt_clm_smollm2.py (AdamW 5e-4, cosine, batch 4 x 256) on the
speeches alone: the race writes its split of them to DIR/{train,validation,test}.jsonl (one
speech per row) and sets `data.path`; both sides read those files. Validation perplexity at
step 0 and every `eval_every` steps, the final weights tested.
"""

from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.head.kind = "lm"
    c.method = "lora"
    c.task.kind = "causal_lm"
    c.task.max_length = 256
    c.data.source = "local"
    c.data.path = None  # the race sets DIR/{split}.jsonl
    c.eval_at_start = True
    c.steps = 40
    c.batch_size = 4
    c.eval_batch_size = 8
    c.eval_every = 20
    c.checkpoint_every = 40
    c.log_every = 10
    c.best_metric = ""
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 4
    c.optimizer.schedule = "cosine"
    return c
