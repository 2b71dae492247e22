"""Instruction fine-tuning: SmolLM2-135M-Instruct with LoRA on chitchat dialogues and arithmetic
questions, conversations rendered with the model's own ChatML template.

Run:
  python -m ftjax.assets fetch chitchat math-add-sub smollm2-135m-instruct
  ftjax train experiments/instruct_smollm2.py --workdir workdirs/instruct --record

Data: two chat sources mixed half and half. `chat`: asset chitchat (4,017 two-party
conversations, split 90/5/5 by conversation with seed 0), multi-turn, the loss on every
assistant turn only (ftjax.data.conversation). `math`: asset math-add-sub (DeepMind
mathematics_dataset arithmetic__add_or_sub: 1,800 train / 200 validation / 100 test questions
from its interpolation set), one user question and the assistant's answer. Conversations are
packed whole into rows of 256 tokens; a longer one is truncated.

Metrics: `perplexity` of the assistant turns of held-out conversations (validation/chat,
response perplexity), and `exact_match` of the math answers generated greedily from the
question (GenerationEval: the whole answer string must equal the reference), at step 0 (the
instruct model as it ships) and at the end; the test split once, at the end. Selection follows
validation exact match.

Measured (2-core CPU shared with up to four other runs, 2026-12-06, the config as written: 100
steps of 4 packed rows of 256 tokens, LoRA r=8, AdamW 1e-3 cosine, 3,162 s wall;
experiments/results/instruct_smollm2.json, "zero-shot" = its metrics_at_start):
  ftjax train experiments/instruct_smollm2.py --workdir workdirs/instruct --record
                                    zero-shot   after 100 steps
  math exact match, validation (100)   0.0        7.0
  math exact match, test (100)          -         5.0
  chat response perplexity, val         63.3       37.6   (test 36.6)
  math answer perplexity, val           8.80       2.62
Zero-shot the model explains instead of answering; after 100 steps it answers with a number in
the reference's format, usually the wrong one ("2240976.023" for 0.6 + 2240976.023): a 135M
model does not learn decimal addition from 400 questions.
"""

import ml_collections

from ftjax import assets
from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.head.kind = "lm"
    c.method = "lora"
    c.task.kind = "chat"
    c.task.max_length = 256
    c.sources.chat = ml_collections.ConfigDict({
        "kind": "local", "format": "jsonl", "path": str(assets.resolve("chitchat")),
        "messages_column": "messages", "label_column": None,
        "split_fractions": (0.9, 0.05, 0.05), "split_seed": 0, "max_eval_examples": 100,
    })
    c.sources.math = ml_collections.ConfigDict({
        "kind": "local", "format": "jsonl",
        "path": str(assets.resolve("math-add-sub").parent / "{split}.jsonl"),
        "messages_column": "messages", "label_column": None, "max_eval_examples": 100,
        "generation_metrics": ("exact_match",),
    })
    c.data.source = "polarity"
    c.hooks = ("ftjax.generate.evaluation:GenerationEval",)
    c.eval_splits = ("validation",)  # the test split once, at the end
    c.eval_at_start = True
    c.steps = 100
    c.batch_size = 4
    c.eval_batch_size = 8
    c.eval_every = 100
    c.checkpoint_every = 50
    c.log_every = 10
    c.best_metric = "exact_match"
    c.best_mode = "max"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 10
    c.optimizer.schedule = "cosine"
    return c
