"""`ftjax export`: write a model as an HF directory, or a LoRA adapter in the HF PEFT format.

  ftjax export --model NAME_OR_PATH --out DIR              the base model, as transformers loads it
  ftjax export --workdir RUN --out DIR [--best]            a fine-tuned run, LoRA / (IA)^3 merged
  ftjax export --workdir RUN --format peft --out DIR       the run's LoRA adapter for peft
  ftjax export --workdir RUN --format adapter --out DIR    the run's trainable delta (+ new head)
                                                           as an ftjax adapter-only checkpoint

Format hf writes the pretrained architecture, so a run's PEFT leaves must fold into its weights:
LoRA and (IA)^3 do (ftjax.peft.merge_peft); adapters, prefix and prompt tuning add computation
that architecture lacks, and exporting such a run is refused with a message saying so.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="asset name or path of a pretrained model")
    source.add_argument("--workdir", help="a training run directory (its config.json + checkpoints)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--format", choices=("hf", "peft", "adapter"), default="hf")
    parser.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")
    parser.add_argument("--dtype", default=None, help="storage dtype of the written tensors")
    parser.add_argument("--backbone-only", action="store_true",
                        help="drop a task head HF format cannot hold (e.g. a new classifier)")


def run(args) -> int:
    from ftjax.io import CheckpointError, load_pretrained, save_hf

    out = Path(args.out)
    try:
        if args.model:
            if args.format != "hf":
                print(f"ftjax export: --format {args.format} needs the --workdir of a run")
                return 2
            pretrained = load_pretrained(args.model, param_dtype="float32")
            save_hf(pretrained.model, pretrained.params, out, tokenizer=pretrained.tokenizer,
                    dtype=args.dtype)
            print(f"wrote {args.model} to {out}")
            return 0
        refusal = _unmergeable_method(Path(args.workdir)) if args.format == "hf" else None
        if refusal:
            print(f"ftjax export: --format hf: {refusal}")
            return 2
        from ftjax.train.restore import restore_run

        exp, restored = restore_run(args.workdir, best=args.best, full_precision=True)
        params, step = restored.state.params, restored.step
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        print(f"ftjax export: {err}")
        return 2

    model, lora = exp.model, exp.model.config.lora
    if args.format == "adapter":
        from ftjax.io.adapter import save_adapter
        from ftjax.optim import trainability

        info = save_adapter(out, model, params, trainability.trainable_mask(exp.resolved),
                            base_name=exp.cfg.model.name, method=exp.cfg.method, step=step)
        print(f"wrote the delta of step {step} ({info.num_params:,} parameters, "
              f"{info.num_bytes / 2**20:.2f} MiB) to {out}")
        return 0
    if args.format == "peft":
        if lora is None or model.config.peft_methods != ("lora",):
            print(f"ftjax export: --format peft exports a LoRA adapter; this run's method is "
                  f"{exp.cfg.method!r}")
            return 2
        from ftjax.io.peft_format import save_peft

        save_peft(model, params, out)
        print(f"wrote the LoRA adapter of step {step} to {out}")
        return 0
    merged = model.config.peft_methods
    if merged:
        from ftjax.peft import merge_peft

        try:
            model, params = merge_peft(model, params)
        except ValueError as err:
            print(f"ftjax export: --format hf: {err}")
            return 2
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
    print(f"wrote step {step} of {args.workdir} to {out}"
          + (f" ({', '.join(merged)} merged)" if merged else ""))
    return 0


def _unmergeable_method(workdir: Path) -> str | None:
    """Why a run's method cannot become an HF model, read from its config before anything is
    built (restoring a run costs a model load); None when it can or the config is unreadable
    (restore_run then reports what is wrong)."""
    import json

    from ftjax.peft import MERGEABLE, PEFT_METHODS

    try:
        method = json.loads((workdir / "config.json").read_text())["method"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if method not in PEFT_METHODS or PEFT_METHODS[method][0] in MERGEABLE:
        return None
    return (f"the run's method {method!r} cannot be merged into the pretrained architecture's "
            "weights (adapters add layers, prefix and prompt tuning add attention inputs), so no "
            "Hugging Face model can hold it; its checkpoint serves `ftjax eval` and "
            "`ftjax generate --adapter RUN`")
