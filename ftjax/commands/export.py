"""`ftjax export`: write a model as an HF directory, or a LoRA adapter in the HF PEFT format.

  ftjax export --model NAME_OR_PATH --out DIR              the base model, as transformers loads it
  ftjax export --workdir RUN --out DIR [--best]            a fine-tuned run, LoRA merged (format hf)
  ftjax export --workdir RUN --format peft --out DIR       the run's LoRA adapter for peft
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="asset name or path of a pretrained model")
    source.add_argument("--workdir", help="a training run directory (its config.json + checkpoints)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--format", choices=("hf", "peft"), default="hf")
    parser.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")
    parser.add_argument("--dtype", default=None, help="storage dtype of the written tensors")
    parser.add_argument("--backbone-only", action="store_true",
                        help="drop a task head HF format cannot hold (e.g. a new classifier)")


def run(args) -> int:
    from ftjax.io import CheckpointError, load_pretrained, save_hf

    out = Path(args.out)
    try:
        if args.model:
            if args.format == "peft":
                print("ftjax export: --format peft needs a --workdir of a LoRA run")
                return 2
            pretrained = load_pretrained(args.model, param_dtype="float32")
            save_hf(pretrained.model, pretrained.params, out, tokenizer=pretrained.tokenizer,
                    dtype=args.dtype)
            print(f"wrote {args.model} to {out}")
            return 0
        from ftjax.train.experiment import restore_run

        exp, restored = restore_run(args.workdir, best=args.best, full_precision=True)
        params, step = restored.state.params, restored.step
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        print(f"ftjax export: {err}")
        return 2

    model, lora = exp.model, exp.model.config.lora
    if args.format == "peft":
        if lora is None:
            print("ftjax export: --format peft exports a LoRA adapter; this run has none")
            return 2
        from ftjax.peft.peft_format import save_peft

        save_peft(model, params, out)
        print(f"wrote the LoRA adapter of step {step} to {out}")
        return 0
    if lora is not None:
        from ftjax.peft import merge, with_lora

        params, model = merge(params, lora), with_lora(model, None)
    if model.head_config.kind not in ("lm", "none"):
        if not args.backbone_only:
            print(f"ftjax export: HF format holds no {model.head_config.kind!r} head of ours; "
                  f"pass --backbone-only to export the fine-tuned backbone without it")
            return 2
        params = {"backbone": params["backbone"]}
    try:
        save_hf(model, params, out, tokenizer=exp.tokenizer, dtype=args.dtype)
    except CheckpointError as err:
        print(f"ftjax export: {err}")
        return 2
    print(f"wrote step {step} of {args.workdir} to {out}" + (" (LoRA merged)" if lora else ""))
    return 0
