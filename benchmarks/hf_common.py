"""What the HF side of every race shares (benchmarks/hf_*.py): the command line, the events a
watcher times, and the Trainer recipe. Imports no ftjax and no jax: the HF scripts' start-up is
the HF stack's alone.

Events: one JSON row per line appended to OUT/events.jsonl as it happens: {"event":
"first_step"}, {"event": "eval", "step", <metric>}, {"event": "test", "step", <metric>}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import transformers


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="the HF model directory")
    p.add_argument("--data", required=True, type=Path, help="DIR/{train,validation,test}.jsonl")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--schedule", default="linear", choices=("linear", "cosine"))
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    return p


class Events:
    """OUT/events.jsonl, flushed row by row so a watcher sees each event when it happens."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self._file = open(out / "events.jsonl", "a")

    def emit(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def callback(self, metric: str, key: str, transform=float) -> transformers.TrainerCallback:
        """A callback emitting the first finished step and, for every evaluation of the
        validation split (its metrics hold `key`), `metric` = transform(metrics[key])."""
        emit = self.emit

        class Callback(transformers.TrainerCallback):
            def on_step_end(self, targs, state, control, **kwargs):
                if state.global_step == 1:
                    emit({"event": "first_step", "step": 1})

            def on_evaluate(self, targs, state, control, metrics=None, **kwargs):
                if key in (metrics or {}):
                    emit({"event": "eval", "step": state.global_step,
                          metric: transform(metrics[key])})

        return Callback()

    def close(self) -> None:
        self._file.close()


def training_args(args, *, group_by_length: bool = True,
                  **extra) -> transformers.TrainingArguments:
    """The races' shared recipe: AdamW with decoupled weight decay, linear warm-up then the
    schedule, clipping at 1.0, evaluation every --eval-every steps, no checkpoints, on the CPU."""
    if group_by_length:
        extra["train_sampling_strategy"] = "group_by_length"
    return transformers.TrainingArguments(
        output_dir=str(args.out / "trainer"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup,
        lr_scheduler_type=args.schedule, max_grad_norm=1.0, eval_strategy="steps",
        eval_steps=args.eval_every, save_strategy="no", logging_steps=args.eval_every,
        report_to=[], seed=args.seed, data_seed=args.seed, dataloader_num_workers=0,
        use_cpu=True, disable_tqdm=True, **extra)


def splits(data: Path):
    """DATA/{train,validation,test}.jsonl as one datasets.DatasetDict."""
    return datasets.load_dataset("json", data_files={
        s: str(data / f"{s}.jsonl") for s in ("train", "validation", "test")})
