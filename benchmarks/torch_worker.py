"""The baseline: transformers + peft on torch, the way a careful user would run it.

GPU suite: LlamaForCausalLM (attn_implementation="sdpa"), bf16 autocast, fused AdamW; full
fine-tuning keeps fp32 master weights (as ftjax does); LoRA (peft, r=16, alpha=32 on
q,k,v,o,gate,up,down) loads the frozen base in bf16 with fp32 adapters (peft's default upcast),
the same storage as ftjax's frozen_dtype=bfloat16. "torch.compile" wraps the model in
torch.compile (default mode). CPU suite: BertForSequenceClassification from the same MiniLM
files, fp32, peft SEQ_CLS LoRA (r=8 on query, value; the classifier trains).
"""

from __future__ import annotations

import numpy as np

from benchmarks.specs import (
    CPU_LORA_ALPHA,
    CPU_LORA_RANK,
    LEARNING_RATE,
    LLAMA_LORA_MODULES,
    LORA_ALPHA,
    LORA_RANK,
    SIZES,
    Job,
    cpu_model,
    max_rss_gib,
    time_steps,
)


def _llama(job: Job, device: str):
    import peft
    import torch
    import transformers

    s = SIZES[job.size]
    cfg = transformers.LlamaConfig(
        vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_layers"],
        num_attention_heads=s["num_heads"], num_key_value_heads=s["num_kv_heads"],
        head_dim=s["head_dim"], max_position_embeddings=max(job.seq, 2048),
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa",
                                                        dtype=torch.float32)
    lora_base_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base_dtype = job.options.get("base_dtype")
    base_dtype = getattr(torch, base_dtype) if base_dtype else (
        lora_base_dtype if job.mode == "lora" else torch.float32)
    model.to(device=device, dtype=base_dtype)
    if job.mode == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
            target_modules=list(LLAMA_LORA_MODULES)))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, s["vocab_size"], (job.batch, job.seq), generator=gen).to(device)
    return model, [{"input_ids": ids, "labels": ids}], {"base_dtype": str(base_dtype)}


def _minilm(job: Job, device: str):
    import peft
    import torch
    import transformers

    from ftjax import assets

    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        assets.resolve("all-minilm-l6-v2"), num_labels=2, attn_implementation="sdpa",
        dtype=torch.float32)
    if job.mode == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(
            task_type="SEQ_CLS", r=CPU_LORA_RANK, lora_alpha=CPU_LORA_ALPHA, lora_dropout=0.0,
            target_modules=["query", "value"]))
    data = dict(np.load(job.batches_file))
    n = len({k.split("/")[0] for k in data})
    batches = []
    for i in range(n):
        b = {k[len(f"{i}/"):]: v for k, v in data.items() if k.startswith(f"{i}/")}
        batches.append({
            "input_ids": torch.from_numpy(b["input_ids"].astype(np.int64)),
            "attention_mask": torch.from_numpy(b["attention_mask"].astype(np.int64)),
            "token_type_ids": torch.from_numpy(b["token_type_ids"].astype(np.int64)),
            "labels": torch.from_numpy(b["labels"].astype(np.int64)),
        })
    return model.to(device), batches, {"base_dtype": "torch.float32"}


def run(job: Job) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if job.options.get("single_thread"):
        torch.set_num_threads(1)
    model, batches, config = (_llama if job.suite == "gpu" else _minilm)(job, device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0,
                            fused=device == "cuda")
    forward = torch.compile(model) if job.impl == "torch.compile" else model
    autocast = device == "cuda"  # bf16 autocast on GPU; fp32 on CPU (the CPU suite's setting)
    box = {"i": 0}

    def one_step():
        batch = batches[box["i"] % len(batches)]
        box["i"] += 1
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = forward(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        box["loss"] = loss
        return loss

    def sync(loss):
        if device == "cuda":
            torch.cuda.synchronize()
        else:
            loss.item()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timing = time_steps(one_step, sync, job.warmup, job.steps)
    if device == "cuda":
        peak, kind = torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated"
        name = torch.cuda.get_device_name(0)
    else:
        peak, kind, name = max_rss_gib(), "process max RSS (CPU)", cpu_model()
    return {**timing, "device": name, "peak_gib": peak, "peak_kind": kind,
            "final_loss": float(box["loss"].item()),
            "config": {**config, "autocast_bf16": autocast, "fused_adamw": device == "cuda",
                       "attn_implementation": "sdpa", "threads": torch.get_num_threads()}}
