"""The baseline a user would write for NER: HF `Trainer` fine-tuning MiniLM as a token tagger.

    python -m benchmarks.hf_ner --model DIR --data DIR --out DIR ...

Reads DATA/{train,validation,test}.jsonl ({"tokens": words, "tags": tag names} rows) and
DATA/tags.json (the tag set). BertForTokenClassification (dropout 0.1 + a linear tagger); words
tokenized as pre-split words (`is_split_into_words`), the first sub-token of each word carries
its tag, the other sub-tokens and special tokens -100 (HF's token-classification recipe);
DataCollatorForTokenClassification pads each batch; length-grouped batches; the races' recipe
(benchmarks.hf_common). Metric: seqeval entity F1 (default mode) over every word of every
sentence, a word cut off by --max-length predicted "O" (as ftjax scores it). Events for the
watcher in OUT/events.jsonl.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import transformers
from seqeval.metrics import f1_score

from benchmarks.hf_common import Events, parser, splits, training_args


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    events = Events(args.out)
    names = json.loads((args.data / "tags.json").read_text())
    tag_id = {name: i for i, name in enumerate(names)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    raw = splits(args.data)

    def encode(batch):
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True,
                            max_length=args.max_length)
        labels = []
        for i, tags in enumerate(batch["tags"]):
            row, previous = [], None
            for word in encoded.word_ids(i):
                row.append(-100 if word is None or word == previous else tag_id[tags[word]])
                previous = word
            labels.append(row)
        encoded["labels"] = labels
        return encoded

    data = raw.map(encode, batched=True, remove_columns=["tokens", "tags"])
    pad = tokenizer.pad_token_id
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=len(names), attn_implementation="sdpa")
    # Trainer evaluates in a length-grouped order (its eval sampler follows the train
    # sampling strategy): each predicted row is matched back to its sentence by its input ids
    # and labels (include_for_metrics; words split differently can give the same ids, their
    # first sub-tokens tell them apart), so the words cut off by --max-length are scored as
    # ftjax scores them.
    scored = {"split": "validation"}

    def entity_f1(prediction) -> dict:
        split = scored["split"]
        rows_of: dict[tuple, list[int]] = {}
        for i, (ids, labels) in enumerate(zip(data[split]["input_ids"], data[split]["labels"])):
            rows_of.setdefault((tuple(ids), tuple(labels)), []).append(i)
        gold_tags = raw[split]["tags"]
        gold, predicted = [], []
        for ids, row_ids, row_labels in zip(prediction.inputs, np.argmax(prediction.predictions,
                                                                          -1),
                                            prediction.label_ids):
            real = tuple(int(t) for t in ids if t not in (-100, pad))  # right-padded rows
            sentence = rows_of[real, tuple(int(t) for t in row_labels[:len(real)])].pop()
            tags = [names[t] for t, label in zip(row_ids, row_labels) if label != -100]
            gold.append(gold_tags[sentence])
            predicted.append(tags + ["O"] * (len(gold_tags[sentence]) - len(tags)))
        return {"f1": float(f1_score(gold, predicted, zero_division=0))}

    trainer = transformers.Trainer(
        model=model, args=training_args(args, include_for_metrics=["inputs"]),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=transformers.DataCollatorForTokenClassification(tokenizer),
        compute_metrics=entity_f1, callbacks=[events.callback("f1", "eval_f1")])
    trainer.train()
    scored["split"] = "test"
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    events.emit({"event": "test", "step": args.steps, "f1": test["test_f1"]})
    events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
