"""Surgical fine-tuning of all-MiniLM-L6-v2 on sentence polarity: one block trains, the rest not.

Lee et al. 2022 ("Surgical Fine-Tuning Improves Adaptation to Distribution Shifts") tune a single
block and find that which block is best depends on the kind of shift. This file asks the
in-distribution question on polarity: how much of full fine-tuning does each block alone recover?

Run (one variant per block, and the linear probe as the floor):
  for v in head block0 block1 block2 block3 block4 block5; do
    ftjax train experiments/surgical_minilm.py:$v --workdir workdirs/surgical/$v
  done

Each variant is `method="custom"` with config `rules` (block i and the new head train, everything
else is frozen), on the scanned layout: the train step cuts its scan around block i, so the
blocks below it run forward only and those above it get no weight gradient. Same data, split,
steps and schedule as experiments/polarity_minilm.py, at the learning rate of `top_layers`
(1e-4), untuned. Measured 2026-12-01 on the 2-core CPU, one seed (README.md, "Surgical
fine-tuning"): test accuracy 0.676 (head only), then blocks 0-5: 0.797, 0.825, 0.833, 0.820,
0.810, 0.785; full fine-tuning 0.856.
"""

from pathlib import Path

from ftjax.settings import import_config_file

NUM_BLOCKS = 6  # all-MiniLM-L6-v2


def get_config(variant: str = "block5"):
    c = import_config_file(Path(__file__).with_name("polarity_minilm.py"))
    c.model.scan_layers = True
    c.method = "custom"
    blocks = {f"block{i}": i for i in range(NUM_BLOCKS)}
    if variant == "head":
        c.rules = (("head/.*", "train"), (".*", "frozen"))
    elif variant in blocks:
        c.rules = ((f"backbone/layers_{blocks[variant]}/.*", "train"), ("head/.*", "train"),
                   (".*", "frozen"))
    else:
        raise ValueError(f"unknown variant {variant!r}; expected 'head' or one of {list(blocks)}")
    c.optimizer.learning_rate = 1e-4
    return c
