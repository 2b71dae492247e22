"""XLA's own FLOP count of ftjax's train step against the formula behind MFU (specs.py).

    python -m benchmarks.flops --size 1.1B --mode lora --seq 1024 --batch 8

Compiles the benchmark's train step from shapes only (nothing is allocated, so a 1.1B step
compiles on a laptop CPU in seconds) and reads `cost_analysis()["flops"]`. A check of the MFU
denominator, and of the frozen-weight claim behind LoRA's "4 N": a frozen weight that gained a
weight gradient would show up here as ~2 N more. Layers are unrolled, since XLA counts the body
of a scanned loop once; the bf16 compute dtype is the GPU suite's.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.specs import LLAMA_LORA_TARGETS, LORA_RANK, SIZES, llama_flops_per_token


def compiled_flops(size: str, mode: str, seq: int, batch: int) -> dict:
    """{"xla_flops", "formula_flops", "ratio"} for one train step of the benchmark shape."""
    import jax
    import numpy as np

    from benchmarks.jax_worker import optimizer_for
    from ftjax.models import HeadConfig, LlamaConfig, Model, param_shapes
    from ftjax.objectives import loss_for_task
    from ftjax.peft import LoraConfig, with_lora
    from ftjax.train.step import create_train_state, make_train_step

    model = Model(LlamaConfig(**SIZES[size], max_position_embeddings=seq, dtype="bfloat16",
                              scan_layers=False), HeadConfig("lm"))
    if mode == "lora":
        model = with_lora(model, LoraConfig(rank=LORA_RANK, targets=LLAMA_LORA_TARGETS))
    params = param_shapes(model)
    mask, tx = optimizer_for(model, params, mode, steps=10)
    state = jax.eval_shape(lambda p: create_train_state(p, mask, tx, 0), params)
    ints = jax.ShapeDtypeStruct((batch, seq), np.int32)
    batch_shapes = {"input_ids": ints, "attention_mask": ints, "segment_ids": ints,
                    "positions": ints, "labels": ints,
                    "loss_mask": jax.ShapeDtypeStruct((batch, seq), np.float32)}
    step = jax.jit(make_train_step(model, tx, loss_for_task("causal_lm")))
    cost = step.lower(state, batch_shapes).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a one-item list in some jax versions
    formula = llama_flops_per_token(SIZES[size], seq, mode) * batch * seq
    return {"xla_flops": float(cost["flops"]), "formula_flops": float(formula),
            "ratio": float(cost["flops"]) / formula}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1.1B")
    parser.add_argument("--mode", choices=["full", "lora"], default="lora")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    row = {"size": args.size, "mode": args.mode, "seq": args.seq, "batch": args.batch,
           **compiled_flops(args.size, args.mode, args.seq, args.batch)}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
