"""Every trainability preset fine-tunes the real all-MiniLM-L6-v2 on real polarity sentences.

Hand counts (all-MiniLM-L6-v2: 6 layers of 1,774,464 params, hidden 384, MLP 1536; a new
2-class head of 384 x 2 + 2 = 770):
  biases per layer: q, k, v, o (4 x 384) + two LayerNorm biases (2 x 384) + MLP (1536 + 384)
  = 4,224; plus the embedding LayerNorm bias (384) and the pooler bias (384).
LoRA (rank 8 on query and value) adds 6 x 2 x (384 x 8 + 8 x 384) = 73,728 leaves to the model.
"""

import json

import pytest

from ftjax.train.config import load_config
from ftjax.train.loop import train

TOTAL = 22_713_216 + 770
HEAD = 770
LAYER = 1_774_464
POOLER = 384 * 384 + 384
BIASES = 6 * 4_224 + 384 + 384
LORA = 6 * 2 * (384 * 8 + 8 * 384)  # rank 8 (A and B) on query and value of every layer
EXPECTED_TRAINABLE = {
    "full": TOTAL,
    "linear_probe": HEAD,
    "top_layers": 2 * LAYER + POOLER + HEAD,  # method_args.top_k = 2, plus pooler and head
    "bitfit": BIASES + HEAD,
    "llrd": TOTAL,
    "gradual_unfreeze": TOTAL,
    "lora": LORA + HEAD,  # only the adapters and the new head train
}
# Rates large enough that 8 steps on one small set visibly lower its loss.
LEARNING_RATES = {"full": 1e-4, "linear_probe": 3e-2, "top_layers": 3e-4, "bitfit": 3e-3,
                  "llrd": 2e-4, "gradual_unfreeze": 1e-3, "lora": 3e-3}


@pytest.mark.parametrize("method", list(EXPECTED_TRAINABLE))
def test_preset_trains_real_minilm_on_polarity(method, tmp_path):
    cfg = load_config("experiments/polarity_minilm.py", [
        f"method={method}", f"optimizer.learning_rate={LEARNING_RATES[method]}",
        "optimizer.warmup_steps=0", "optimizer.schedule=constant", "steps=8",
        "batch_size=16", "task.max_length=32", "data.max_train_examples=16",
        "eval_every=1000", "checkpoint_every=1000", "log_every=1", "best_metric=",
        "eval_splits=()", "method_args.unfreeze_every=2", "model.hidden_dropout=0.0",
        "model.attention_dropout=0.0",
    ])
    result = train(cfg, tmp_path, quiet=True)
    report = json.loads((tmp_path / "params_report.json").read_text())
    assert report["total"] == TOTAL + (LORA if method == "lora" else 0)
    assert report["trainable"] == EXPECTED_TRAINABLE[method]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "split" not in r]
    assert len(losses) == 8
    # The same 16 sentences every step: the loss on them must come down.
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    assert result.final_step == 8
