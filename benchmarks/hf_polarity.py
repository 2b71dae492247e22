"""The baseline a user would write: HF `Trainer` (+ `peft` LoRA) fine-tuning MiniLM on polarity.

    python -m benchmarks.hf_polarity --model DIR --data DIR --out DIR [--mode lora] ...

Reads DATA/{train,validation,test}.jsonl ({"text", "label"} rows), fine-tunes
BertForSequenceClassification (the CLS pooler + dropout 0.1 + a linear classifier) with dynamic
padding and length-grouped batches, the races' recipe (benchmarks.hf_common), and evaluates
validation accuracy every --eval-every steps; the final weights' test accuracy at the end.
Events for the watcher in OUT/events.jsonl (benchmarks.hf_common).
"""

from __future__ import annotations

import sys

import numpy as np
import peft
import transformers

from benchmarks.hf_common import Events, parser, splits, training_args


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("full", "lora"), default="full")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    events = Events(args.out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    data = splits(args.data).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length),
        batched=True, remove_columns=["text"]).rename_column("label", "labels")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=2, attn_implementation="sdpa")
    if args.mode == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(
            task_type="SEQ_CLS", r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0,
            target_modules=["query", "value"]))

    def accuracy(prediction) -> dict:
        return {"accuracy": float(np.mean(np.argmax(prediction.predictions, -1)
                                          == prediction.label_ids))}

    trainer = transformers.Trainer(
        model=model, args=training_args(args), train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=transformers.DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
        callbacks=[events.callback("accuracy", "eval_accuracy")])
    trainer.train()
    test = trainer.predict(data["test"])
    events.emit({"event": "test", "step": args.steps, "accuracy": accuracy(test)["accuracy"]})
    events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
