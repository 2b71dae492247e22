"""`ftjax export`: write a model as an HF directory, or a LoRA adapter in the HF PEFT format.

  ftjax export --model NAME_OR_PATH --out DIR              the base model, as transformers loads it
  ftjax export --workdir RUN --out DIR [--best]            a fine-tuned run, LoRA / (IA)^3 merged
  ftjax export --workdir RUN --format peft --out DIR       the run's LoRA adapter for peft
  ftjax export --workdir RUN --format adapter --out DIR    the run's trainable delta (+ new head)
                                                           as an ftjax adapter-only checkpoint

An export never writes over existing files: a non-empty --out is refused unless --overwrite is
given, and every format is written into a temporary sibling directory that replaces --out only
when complete (ftjax.io.atomic_dir), so a failed or killed export leaves --out as it was.

Format hf writes the pretrained architecture, so a run's PEFT leaves must fold into its weights:
LoRA and (IA)^3 do (ftjax.peft.merge_peft); adapters, prefix and prompt tuning add computation
that architecture lacks, and exporting such a run is refused with a message saying so. Format
peft writes the LoRA leaves and a new task head (as peft's `modules_to_save`, where a transformers
class has the head: ftjax.io.peft_format); a head or trained leaf it cannot hold is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Where a head or leaf cannot go into the format asked for, these two can hold the run.
_ALTERNATIVES = ("--format adapter keeps it (an ftjax adapter-only checkpoint), --format hf "
                 "--backbone-only exports the fine-tuned backbone without it")


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="asset name or path of a pretrained model")
    source.add_argument("--workdir", help="a training run directory (its config.json + checkpoints)")
    parser.add_argument("--out", required=True,
                        help="output directory: missing or empty (see --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out; the old contents go only once the new "
                             "export is complete")
    parser.add_argument("--format", choices=("hf", "peft", "adapter"), default="hf")
    parser.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")
    parser.add_argument("--dtype", default=None, help="storage dtype of the written tensors")
    parser.add_argument("--backbone-only", action="store_true",
                        help="drop a task head HF format cannot hold (e.g. a new classifier)")


def _refuse(message: str) -> int:
    print(f"ftjax export: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    from ftjax.assets import AssetError
    from ftjax.io import CheckpointError
    from ftjax.io.atomic_dir import OutputExistsError, check_target

    # Input errors (a bad path, a non-empty --out, a head the format cannot hold, a directory
    # that is not a run) are one line on stderr and exit status 2; nothing is written.
    try:
        return _export(args, check_target(args.out, overwrite=args.overwrite))
    except (FileNotFoundError, NotADirectoryError, OutputExistsError, CheckpointError,
            AssetError) as err:
        return _refuse(str(err))


def _export(args, out: Path) -> int:
    from ftjax.io import load_pretrained, save_hf

    if args.model:
        if args.format != "hf":
            return _refuse(f"--format {args.format} needs the --workdir of a run")
        try:
            pretrained = load_pretrained(args.model, param_dtype="float32")
        except ValueError as err:  # an unsupported or inconsistent checkpoint
            return _refuse(str(err))
        save_hf(pretrained.model, pretrained.params, out, tokenizer=pretrained.tokenizer,
                dtype=args.dtype, overwrite=args.overwrite)
        print(f"wrote {args.model} to {out}")
        return 0
    workdir = Path(args.workdir)
    if not workdir.is_dir():
        return _refuse(f"--workdir {workdir} is not a directory")
    refusal = _unmergeable_method(workdir) if args.format == "hf" else None
    if refusal:
        return _refuse(f"--format hf: {refusal}")
    from ftjax.train.restore import restore_run

    try:
        exp, restored = restore_run(workdir, best=args.best, full_precision=True)
    except ValueError as err:  # a config that no longer builds (ConfigError, DataError, ...)
        return _refuse(str(err))
    params, step = restored.state.params, restored.step
    model = exp.model
    mask = exp.mask
    if model.adapter_slots is not None and args.format != "adapter":
        return _refuse(f"--format {args.format}: the run holds one adapter per task "
                       f"({', '.join(model.adapter_slots.names)}), not one set of weights; "
                       f"--format adapter writes each task's adapter")
    if args.format == "adapter":
        from ftjax.io.adapter import save_adapter, save_task_adapters

        common = dict(base_name=exp.cfg.model.name, method=exp.cfg.method, step=step,
                      overwrite=args.overwrite)
        if model.adapter_slots is not None:
            infos = save_task_adapters(out, model, params, mask, **common)
            print(f"wrote the adapters of step {step} for tasks {', '.join(infos)} "
                  f"({sum(i.num_params for i in infos.values()):,} parameters) to {out}/<task>")
            return 0
        info = save_adapter(out, model, params, mask, **common)
        print(f"wrote the delta of step {step} ({info.num_params:,} parameters, "
              f"{info.num_bytes / 2**20:.2f} MiB) to {out}")
        return 0
    if args.format == "peft":
        from ftjax.io.peft_format import peft_refusal, save_peft

        refusal = peft_refusal(model, params, mask)
        if refusal:
            return _refuse(f"--format peft: {refusal}; {_ALTERNATIVES}")
        save_peft(model, params, out, base_model_name_or_path=exp.cfg.model.name,
                  trainable_mask=mask, overwrite=args.overwrite)
        print(f"wrote the LoRA adapter of step {step} to {out}")
        return 0
    merged = model.config.peft_methods
    if merged:
        from ftjax.peft import merge_peft

        try:
            model, params = merge_peft(model, params)
        except ValueError as err:
            return _refuse(f"--format hf: {err}")
    heads = ([name for name, _ in model.task_heads] if model.task_heads
             else [] if model.head_config.kind in ("lm", "none") else [model.head_config.kind])
    if heads:
        if not args.backbone_only:
            what = (f"the task heads {heads} of a multi-task run" if model.task_heads
                    else f"our {heads[0]!r} head")
            return _refuse(f"HF format cannot hold {what}; pass --backbone-only to export the "
                           f"fine-tuned backbone without it")
        params = {"backbone": params["backbone"]}
    save_hf(model, params, out, tokenizer=exp.tokenizer, dtype=args.dtype,
            overwrite=args.overwrite)
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
