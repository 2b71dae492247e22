"""The baseline a user would write for continued pretraining: HF `Trainer` + `peft` LoRA on
packed causal-LM text.

    python -m benchmarks.hf_clm --model DIR --data DIR --out DIR ...

Reads DATA/{train,validation,test}.jsonl ({"text": one document} rows). Each document is
tokenized with EOS appended, the documents of a split concatenated and cut into blocks of
--max-length tokens (transformers' run_clm recipe: full rows, no padding; the remainder
dropped); labels are the inputs (the model shifts them). AutoModelForCausalLM in fp32 with
LoRA (r, alpha from the command line, dropout 0) on q_proj and v_proj; the races' recipe
(benchmarks.hf_common) with --schedule. Validation perplexity (exp of the mean eval loss) before
the first step and every --eval-every steps; the final weights' test perplexity at the end.
Events for the watcher in OUT/events.jsonl.
"""

from __future__ import annotations

import math
import sys

import peft
import torch
import transformers

from benchmarks.hf_common import Events, parser, splits, training_args


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    events = Events(args.out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    block = args.max_length

    def tokenize(batch):
        return {"input_ids": [ids + [tokenizer.eos_token_id]
                              for ids in tokenizer(batch["text"])["input_ids"]]}

    def group(batch):
        stream = [token for ids in batch["input_ids"] for token in ids]
        usable = len(stream) // block * block
        blocks = [stream[i:i + block] for i in range(0, usable, block)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    data = splits(args.data).map(tokenize, batched=True, remove_columns=["text"])
    data = data.map(group, batched=True, batch_size=None)  # a whole split at once
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="sdpa")
    model = peft.get_peft_model(model, peft.LoraConfig(
        task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"]))
    trainer = transformers.Trainer(
        model=model, args=training_args(args, group_by_length=False),
        train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=transformers.default_data_collator,
        callbacks=[events.callback("perplexity", "eval_loss", math.exp)])
    trainer.evaluate()  # step 0: the untrained model, which the race's relative target needs
    trainer.train()
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    events.emit({"event": "test", "step": args.steps, "perplexity": math.exp(test["test_loss"])})
    events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
