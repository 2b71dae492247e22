"""LoRA on SmolLM2-135M-Instruct as a causal LM over movie-review sentences (domain adaptation).

Run:
  ftjax train experiments/smollm2_lora_reviews.py --workdir workdirs/smollm2_lora
  ftjax generate --model smollm2-135m-instruct --adapter workdirs/smollm2_lora \
      --prompt "This movie is" --greedy --max-new-tokens 16
  ftjax export --workdir workdirs/smollm2_lora --format peft --out workdirs/smollm2_lora_peft

Data: the text of the polarity corpus' train split (labels unused), packed into 64-token rows.
LoRA r=8, alpha 16 on q_proj / v_proj (the LoRA paper's choice); the tied LM head stays frozen,
so the adapter-only checkpoint is the 2 x 30 x (576 x 8 + 8 x {576, 192}) LoRA leaves only.
The exported PEFT adapter reproduces `ftjax generate --adapter` in transformers + peft
(tests/test_smollm2_lora_peft.py checks the greedy continuation token for token).
Expected on a 2-core CPU: validation loss (nats/token) falls from the base model's value in the
first eval; figures in README.md.
"""

from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.model.dtype = "float32"
    c.head.kind = "lm"
    c.head.num_labels = 0
    c.task.kind = "causal_lm"
    c.task.max_length = 64
    c.task.packing = True
    c.data.source = "polarity"
    c.method = "lora"
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.steps = 60
    c.batch_size = 8
    c.eval_batch_size = 32
    c.eval_every = 30
    c.checkpoint_every = 60
    c.log_every = 10
    c.best_metric = "loss"
    c.best_mode = "min"
    c.eval_splits = ("validation",)
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 6
    return c
