"""How much of each batch is padding, on real data: fixed-length batches against bucketed ones.

    python -m benchmarks.padding                   # polarity, WNUT-16 NER, SQuAD QA (MiniLM)
    python -m benchmarks.padding --train-batches 50

For each experiment's first source, the real-token share (attended tokens over the batch's
cells) of its first train batches and of one pass over its validation split, in three modes:
`fixed` (every batch task.max_length long), `buckets` (each batch cut to the shortest of
BUCKETS holding its longest row) and `grouped` (rows also sorted by length in windows of
GROUP_WINDOW batches before batching: data.group_by_length). Only tokenization runs: no model,
so the figures are exact and machine-independent. What the saved cells buy in step time is
measured by the speed benchmarks. Results: benchmarks/results/padding-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from ftjax.data import (
    bucket_lengths,
    cut_to_bucket,
    load_run_data,
    make_eval_batches,
    make_train_iterator,
    source_configs,
)
from ftjax.io.tokenizer import load_tokenizer
from ftjax.train.config import load_config, typed

EXPERIMENTS = ("experiments/polarity_minilm.py", "experiments/ner_wnut16_minilm.py",
               "experiments/qa_squad_minilm.py")
BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256)
GROUP_WINDOW = 50  # batches per sorting window, as HF's group_by_length megabatches
MODES = {"fixed": ((), 0), "buckets": (BUCKETS, 0), "grouped": (BUCKETS, GROUP_WINDOW)}


def share(batches, buckets) -> dict:
    """Real tokens over cells of `batches`, each cut to its bucket; and the lengths used."""
    real = cells = 0
    lengths: dict[int, int] = {}
    for batch in batches:
        cut = cut_to_bucket(batch, buckets)
        mask = cut["attention_mask"]
        real += int(mask.sum())
        cells += mask.size
        lengths[mask.shape[1]] = lengths.get(mask.shape[1], 0) + 1
    return {"real_token_share": real / cells, "cells": cells, "real_tokens": real,
            "batches_per_length": dict(sorted(lengths.items()))}


def measure(experiment: str, train_batches: int) -> dict:
    cfg = load_config(experiment)
    run = typed(cfg)
    sources = load_run_data(
        source_configs(run.sources, run.data, run.task), run.task, roles=("train", "validation"),
        num_labels=cfg.head.num_labels if run.task.kind in ("classification",
                                                            "token_classification") else None)
    source = sources[0]
    tokenizer = load_tokenizer(cfg.model.name)
    buckets_of = {name: bucket_lengths(b, source.task.max_length)
                  for name, (b, _) in MODES.items()}
    out = {"max_length": source.task.max_length, "batch_size": cfg.batch_size,
           "eval_batch_size": cfg.eval_batch_size, "source": source.name, "modes": {}}
    for name, (_, window) in MODES.items():
        stream = make_train_iterator(source.splits["train"], source.task, tokenizer,
                                     batch_size=cfg.batch_size, seed=cfg.seed,
                                     group_by_length=window)
        train = share((next(stream) for _ in range(train_batches)), buckets_of[name])
        evaluation = share(make_eval_batches(source.splits["validation"], source.task,
                                             tokenizer, batch_size=cfg.eval_batch_size,
                                             group_by_length=window), buckets_of[name])
        out["modes"][name] = {"buckets": list(buckets_of[name]), "group_by_length": window,
                              "train": train, "validation": evaluation}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-batches", type=int, default=200)
    parser.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS))
    args = parser.parse_args(argv)
    started = time.time()
    results = {e: measure(e, args.train_batches) for e in args.experiments}
    record = {"command": " ".join(["python -m benchmarks.padding", *(argv or sys.argv[1:])]),
              "train_batches": args.train_batches, "buckets": list(BUCKETS),
              "group_window": GROUP_WINDOW, "wall_s": round(time.time() - started, 1),
              "date": datetime.date.today().isoformat(), "results": results}
    path = Path("benchmarks/results") / f"padding-{record['date']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for experiment, r in results.items():
        for mode, m in r["modes"].items():
            print(f"{experiment:40s} {mode:8s} train {m['train']['real_token_share']:.3f}  "
                  f"validation {m['validation']['real_token_share']:.3f}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
