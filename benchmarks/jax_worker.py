"""The ftjax side: the library's own train step (the one `ftjax train` runs), timed.

GPU suite: Llama LM, random init, bf16 compute over fp32 master weights, scanned layers, frozen
base stored in bf16 for LoRA (model.frozen_dtype). CPU suite: all-MiniLM-L6-v2 sequence
classification in fp32, the `make demo` setup. Both: AdamW (no decay, no clipping).
"""

from __future__ import annotations

import numpy as np

from benchmarks.specs import (
    CPU_LORA_ALPHA,
    CPU_LORA_RANK,
    LEARNING_RATE,
    LLAMA_LORA_TARGETS,
    LORA_ALPHA,
    LORA_RANK,
    SIZES,
    Job,
    cpu_model,
    max_rss_gib,
    time_steps,
)


def optimizer_for(model, params, method: str, steps: int):
    """(trainable mask, optax AdamW) for a method, as every benchmark row trains."""
    from ftjax.optim import make_optimizer, trainability
    from ftjax.peft import presets

    spec = presets.method_spec(method, model.config, head_kind=model.head_config.kind)
    resolved = trainability.resolve(spec, params)
    mask = trainability.trainable_mask(resolved)
    trainable, _ = trainability.partition(params, mask)
    opt = {"name": "adamw", "learning_rate": LEARNING_RATE, "schedule": "constant",
           "weight_decay": 0.0, "grad_clip_norm": 0.0}
    return mask, make_optimizer(opt, resolved, trainable, total_steps=steps + 10)


def _llama(job: Job):
    import jax

    from ftjax.models import HeadConfig, LlamaConfig, Model, init_params
    from ftjax.peft import LoraConfig, add_lora

    on_cpu = jax.default_backend() == "cpu"
    opts = job.options
    cfg = LlamaConfig(
        **SIZES[job.size], max_position_embeddings=max(job.seq, 2048),
        dtype=opts.get("dtype", "float32" if on_cpu else "bfloat16"), param_dtype="float32",
        scan_layers=opts.get("scan_layers", True), remat=opts.get("remat", "none"),
        attention_impl=opts.get("attention_impl"),
    )
    model = Model(cfg, HeadConfig("lm"))
    params = init_params(model, jax.random.key(0))
    if job.mode == "lora":
        model, params = add_lora(model, params, LoraConfig(
            rank=LORA_RANK, alpha=LORA_ALPHA, targets=LLAMA_LORA_TARGETS), jax.random.key(1))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (job.batch, job.seq), dtype=np.int32)
    ones = np.ones_like(ids)
    loss_mask = ones.astype(np.float32)
    loss_mask[:, -1] = 0
    batch = {"input_ids": ids, "attention_mask": ones, "segment_ids": ones,
             "positions": np.broadcast_to(np.arange(job.seq, dtype=np.int32), ids.shape).copy(),
             "labels": np.roll(ids, -1, axis=1), "loss_mask": loss_mask}
    frozen_default = None if on_cpu else "bfloat16"
    return model, params, batch, "causal_lm", opts.get("frozen_dtype", frozen_default)


def _minilm(job: Job):
    import jax

    from ftjax.io import load_pretrained
    from ftjax.models import HeadConfig
    from ftjax.peft import LoraConfig, add_lora

    # "pooler": BERT's tanh pooler over [CLS] + a linear classifier, as in transformers'
    # BertForSequenceClassification.
    pretrained = load_pretrained("all-minilm-l6-v2", head=HeadConfig("sequence", 2, "pooler"),
                                 dtype="float32")
    model, params = pretrained.model, pretrained.params
    if job.mode == "lora":  # default targets: query and value
        model, params = add_lora(model, params, LoraConfig(rank=CPU_LORA_RANK,
                                                           alpha=CPU_LORA_ALPHA),
                                 jax.random.key(1))
    data = dict(np.load(job.batches_file))
    batches = [{k[len(f"{i}/"):]: v for k, v in data.items() if k.startswith(f"{i}/")}
               for i in range(len({k.split("/")[0] for k in data}))]
    return model, params, batches, "classification", job.options.get("frozen_dtype")


def run(job: Job) -> dict:
    import jax

    from ftjax.models import plan_for_model
    from ftjax.objectives import loss_for_task
    from ftjax.parallel import make_mesh, place_batch
    from ftjax.train.step import (
        create_train_state,
        jit_train_step,
        make_train_step,
        state_shardings,
    )

    if job.suite == "gpu":
        model, params, batches, task, frozen_dtype = _llama(job)
        batches = [batches]
    else:
        model, params, batches, task, frozen_dtype = _minilm(job)
    mask, tx = optimizer_for(model, params, job.mode, job.warmup + job.steps)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])  # one device: the figure is per device
    plan = plan_for_model(model, params, mesh)
    state = create_train_state(params, mask, tx, 0, plan=plan, frozen_dtype=frozen_dtype,
                               donate_params=True)
    del params
    step_fn = jit_train_step(make_train_step(model, tx, loss_for_task(task)),
                             state_shardings(state), plan.batch)
    placed = [place_batch(b, plan.batch) for b in batches]
    box = {"state": state, "i": 0}

    def one_step():
        batch = placed[box["i"] % len(placed)]
        box["i"] += 1
        box["state"], metrics = step_fn(box["state"], batch)
        box["loss"] = metrics["loss"]
        return metrics["loss"]

    timing = time_steps(one_step, lambda loss: jax.block_until_ready(loss), job.warmup, job.steps)
    # After timing, so compile_s stays the first step's: which attention the program runs.
    compiled = step_fn.lower(box["state"], placed[0]).compile().as_text()
    attention_ran = "cudnn" if "cudnn$fmha" in compiled else "xla"
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        peak, peak_kind = stats["peak_bytes_in_use"] / 2**30, "device peak_bytes_in_use"
    else:
        peak, peak_kind = max_rss_gib(), "process max RSS (CPU)"
    name = cpu_model() if device.platform == "cpu" else device.device_kind
    return {**timing, "device": name, "peak_gib": peak, "peak_kind": peak_kind,
            "final_loss": float(box["loss"]),
            "config": {"dtype": model.config.dtype, "param_dtype": model.config.param_dtype,
                       "frozen_dtype": frozen_dtype, "scan_layers": model.config.scan_layers,
                       "remat": model.config.remat,
                       "attention_impl": model.config.attention_impl or "auto",
                       "attention_ran": attention_ran,
                       "single_thread": bool(job.options.get("single_thread"))}}
