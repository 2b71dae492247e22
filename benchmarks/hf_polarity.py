"""The baseline a user would write: HF `Trainer` (+ `peft` LoRA) fine-tuning MiniLM on polarity.

    python benchmarks/hf_polarity.py --model DIR --data DIR --out DIR [--mode lora] ...

Reads DATA/{train,validation,test}.jsonl ({"text", "label"} rows), fine-tunes
BertForSequenceClassification (the CLS pooler + dropout 0.1 + a linear classifier) with dynamic
padding and length-grouped batches (`train_sampling_strategy="group_by_length"`), AdamW with
linear warm-up and decay, gradient clipping at 1.0, and
evaluates validation accuracy every --eval-every steps. Appends one JSON row per event to
OUT/events.jsonl as it happens (first finished step, every evaluation, the final test accuracy),
so a watcher can time them from outside the process. Imports no ftjax and no jax: its start-up is
the HF stack's alone (benchmarks.race starts it and ftjax side by side).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="the MiniLM HF directory")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--mode", choices=("full", "lora"), default="full")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import datasets
    import peft
    import transformers

    args.out.mkdir(parents=True, exist_ok=True)
    events = open(args.out / "events.jsonl", "a")

    def emit(row: dict) -> None:
        events.write(json.dumps(row) + "\n")
        events.flush()

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    splits = datasets.load_dataset(
        "json", data_files={s: str(args.data / f"{s}.jsonl")
                            for s in ("train", "validation", "test")})
    splits = splits.map(lambda b: tokenizer(b["text"], truncation=True,
                                            max_length=args.max_length),
                        batched=True, remove_columns=["text"])
    splits = splits.rename_column("label", "labels")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=2, attn_implementation="sdpa")
    if args.mode == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(
            task_type="SEQ_CLS", r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0,
            target_modules=["query", "value"]))

    def accuracy(prediction) -> dict:
        return {"accuracy": float(np.mean(np.argmax(prediction.predictions, -1)
                                          == prediction.label_ids))}

    class Events(transformers.TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step == 1:
                emit({"event": "first_step", "step": 1})

        def on_evaluate(self, targs, state, control, metrics=None, **kwargs):
            emit({"event": "eval", "step": state.global_step,
                  "accuracy": metrics["eval_accuracy"]})

    targs = transformers.TrainingArguments(
        output_dir=str(args.out / "trainer"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
        lr_scheduler_type="linear", max_grad_norm=1.0, train_sampling_strategy="group_by_length",
        eval_strategy="steps", eval_steps=args.eval_every, save_strategy="no",
        logging_steps=args.eval_every, report_to=[], seed=args.seed, data_seed=args.seed,
        dataloader_num_workers=0, use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(
        model=model, args=targs, train_dataset=splits["train"], eval_dataset=splits["validation"],
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy, callbacks=[Events()])
    trainer.train()
    test = trainer.predict(splits["test"])
    emit({"event": "test", "step": args.steps, "accuracy": accuracy(test)["accuracy"]})
    events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
