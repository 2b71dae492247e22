"""`ftjax generate`: continue prompts with a pretrained or fine-tuned model and print the text.

  ftjax generate --model smollm2-135m-instruct --chat --greedy \
      --prompt "What is the capital of France?"

Bad input (an unknown model, an empty prompt, max-new-tokens < 1, greedy combined with sampling
options) is an error on stderr and exit code 2, found before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ftjax.commands.errors import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="asset name (e.g. smollm2-135m-instruct) or a checkpoint path")
    parser.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                        help="text to continue; repeat for a batch")
    parser.add_argument("--chat", action="store_true",
                        help="wrap each prompt as a user message in the model's chat template")
    parser.add_argument("--system", metavar="TEXT", help="system message (with --chat)")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding")
    # None = not given, so --greedy can reject them instead of silently ignoring them.
    parser.add_argument("--temperature", type=float, metavar="T", help="sampling temperature "
                        "(default 1.0; 0 means greedy)")
    parser.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens "
                        "(default 0: all)")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus mass in (0, 1] "
                        "(default 1.0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-beams", type=int, default=1, metavar="K",
                        help="beam search with K beams (1: greedy / sampling as set; beams "
                             "cannot be combined with the sampling options)")
    parser.add_argument("--length-penalty", type=float, default=1.0, metavar="A",
                        help="beam score = sum log p / length ** A (> 0 favours longer output)")
    parser.add_argument("--adapter", metavar="DIR", action="append",
                        help="an adapter for the base: an HF PEFT LoRA directory "
                             "(adapter_config.json), an ftjax adapter-only directory "
                             "(adapter.json), or an `ftjax train` run directory of any method "
                             "(its adapter/, else its latest checkpoint). NAME=DIR, given "
                             "several times: many ftjax adapters of one method on the base, "
                             "each --prompt then NAME=TEXT; all prompts decode in one batch, "
                             "each row with its own adapter")
    parser.add_argument("--adapter-store", metavar="STORE",
                        help="every adapter of a store (`ftjax adapters`) on the base, by "
                             "name, as with several --adapter NAME=DIR")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="compute dtype (default: bfloat16 on accelerators, float32 on CPU)")
    parser.add_argument("--stats", action="store_true",
                        help="print load, compile, prefill and decode timings to stderr")


class UsageError(ValueError):
    """Input that the user must fix; reported without a traceback, exit code 2."""


def _sampling(args: argparse.Namespace):
    from ftjax.generate import SamplingConfig

    sampling_flags = {"--temperature": args.temperature, "--top-k": args.top_k,
                      "--top-p": args.top_p}
    given = [flag for flag, value in sampling_flags.items() if value is not None]
    if args.greedy and given:
        raise UsageError(f"--greedy cannot be combined with {', '.join(given)}")
    try:
        return SamplingConfig(
            greedy=args.greedy,
            temperature=1.0 if args.temperature is None else args.temperature,
            top_k=0 if args.top_k is None else args.top_k,
            top_p=1.0 if args.top_p is None else args.top_p,
            seed=args.seed,
        )
    except ValueError as err:
        raise UsageError(str(err).replace("top_k", "--top-k").replace("top_p", "--top-p")) from err


def _check(args: argparse.Namespace) -> None:
    """Everything that can be rejected without loading the model."""
    from ftjax import assets

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    for i, prompt in enumerate(args.prompt):
        if not prompt.strip():
            raise UsageError(f"--prompt number {i + 1} is empty or blank: give some text")
    if args.num_beams < 1:
        raise UsageError(f"--num-beams must be >= 1, got {args.num_beams}")
    if args.num_beams > 1:
        given = [flag for flag, value in (("--temperature", args.temperature),
                                          ("--top-k", args.top_k), ("--top-p", args.top_p))
                 if value is not None]
        if given:
            raise UsageError(f"--num-beams > 1 cannot be combined with {', '.join(given)}")
    if args.system is not None and not args.chat:
        raise UsageError("--system needs --chat")
    named = _named_adapters(args)
    if named is not None:
        for i, prompt in enumerate(args.prompt):
            name = prompt.split("=", 1)[0]
            if "=" not in prompt or name not in named:
                raise UsageError(f"--prompt number {i + 1}: with named adapters each prompt is "
                                 f"NAME=TEXT, NAME one of {', '.join(named)}")
    if not Path(args.model).expanduser().exists() and args.model not in assets.ASSETS:
        raise UsageError(f"unknown model {args.model!r}: not a path and not an asset name "
                         f"(known: {', '.join(sorted(assets.ASSETS))})")


def _named_adapters(args: argparse.Namespace) -> dict[str, str] | None:
    """{name: dir} of many adapters served together, or None for at most one adapter."""
    given = args.adapter or []
    if args.adapter_store:
        if given:
            raise UsageError("--adapter-store serves the store's adapters; drop --adapter")
        from ftjax.io.adapter_store import store_adapters

        try:
            return {name: str(path) for name, path in store_adapters(args.adapter_store).items()}
        except (OSError, ValueError) as err:
            raise UsageError(str(err)) from None
    if len(given) == 1 and "=" not in given[0]:
        return None
    named = {}
    for value in given:
        name, _, directory = value.partition("=")
        if not name or not directory:
            raise UsageError(f"--adapter {value!r}: several adapters are given as NAME=DIR")
        if name in named:
            raise UsageError(f"--adapter name {name!r} is given twice")
        named[name] = directory
    return named or None


def _load_pretrained(name_or_path: str, dtype: str | None) -> Any:
    from ftjax.io import (
        load_pretrained,  # deferred: the loader pulls in the checkpoint readers
    )

    return load_pretrained(name_or_path, dtype=dtype)


def _with_adapter(pretrained, adapter_dir: str):
    """(model, params, tokenizer) of the base with the adapter at `adapter_dir` attached."""
    from ftjax.io.adapter import META_FILE, load_adapter
    from ftjax.io.peft_format import CONFIG_FILE, load_peft

    adapter = Path(adapter_dir)
    if (adapter / CONFIG_FILE).is_file():  # HF PEFT format
        model, params = load_peft(pretrained.model, pretrained.params, adapter)
        if model.head_config.kind != "lm":  # a classifier saved as peft's modules_to_save
            raise ValueError(f"{adapter} holds a {model.head_config.kind!r} head, not an LM head")
        return model, params, pretrained.tokenizer
    if (adapter / "adapter" / META_FILE).is_file():  # a run that wrote its adapter-only file
        adapter = adapter / "adapter"
    if (adapter / META_FILE).is_file():
        model, params = load_adapter(adapter, pretrained)
        if model.head_config.kind != "lm":
            raise ValueError(f"{adapter} trained a {model.head_config.kind!r} head, not an LM head")
        return model, params, pretrained.tokenizer
    from ftjax.train.restore import restore_run

    # An ftjax run: its own config names its base; frozen leaves at their stored precision.
    exp, restored = restore_run(adapter, full_precision=True)
    params = restored.state.params
    if exp.cfg.model.name != pretrained.name:
        raise ValueError(f"{adapter} was trained on {exp.cfg.model.name!r}, not {pretrained.name!r}")
    if exp.model.head_config.kind != "lm":
        raise ValueError(f"{adapter} trained a {exp.model.head_config.kind!r} head, not an LM head")
    return exp.model, params, exp.tokenizer


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        sampling = _sampling(args)
    except UsageError as err:
        return fail("generate", err)

    start = time.perf_counter()
    named = _named_adapters(args)
    prompts, adapters = args.prompt, None
    try:
        pretrained = _load_pretrained(args.model, args.dtype)
        model, params, tokenizer = pretrained.model, pretrained.params, pretrained.tokenizer
        if named is not None:
            from ftjax.io.adapter import load_adapters

            model, params = load_adapters(named, pretrained)
            if model.head_config.kind != "lm":
                raise ValueError("the adapters trained task heads, not an LM head")
            names = list(named)
            adapters = [names.index(p.split("=", 1)[0]) for p in prompts]
            prompts = [p.split("=", 1)[1] for p in prompts]
        elif args.adapter:
            model, params, tokenizer = _with_adapter(pretrained, args.adapter[0])
    except (OSError, ValueError, KeyError) as err:  # unreadable / unsupported checkpoint
        what = f"{args.model!r}" + (f" with adapters {', '.join(named)}" if named
                                    else f" with adapter {args.adapter[0]!r}" if args.adapter
                                    else "")
        return fail("generate", ValueError(f"cannot load {what}: {err}"))
    load_seconds = time.perf_counter() - start

    from ftjax.generate import complete

    try:
        texts, result = complete(
            model, params, tokenizer, prompts,
            sampling=sampling, max_new_tokens=args.max_new_tokens, chat=args.chat,
            system=args.system, warmup=args.stats, num_beams=args.num_beams,
            length_penalty=args.length_penalty, adapters=adapters)
    except ValueError as err:  # e.g. prompt + max-new-tokens longer than the model's context
        return fail("generate", err)

    for text in texts:
        print(text)
    if args.stats:
        _print_stats(load_seconds, result)
    return 0


def _print_stats(load_seconds: float, result) -> None:
    shapes = result.shapes
    new_tokens = sum(len(ids) for ids in result.token_ids)
    lines = [
        f"load            {load_seconds:8.3f} s",
        f"compile+warmup  {result.compile_seconds:8.3f} s  (one untimed run of the same shapes; "
        f"the lines below exclude compilation)",
        f"prefill         {result.prefill_seconds:8.3f} s  ({result.prompt_tokens} prompt tokens "
        f"in {shapes.batch} x {shapes.prompt_length} padded; includes the first new token)",
        f"decode          {result.decode_seconds:8.3f} s  ({result.decode_steps} steps x "
        f"{shapes.batch} rows, cache {shapes.cache_length} slots)",
        f"decode rate     {result.decode_tokens_per_second:8.1f} tokens/s (rows x steps / s, "
        f"finished rows included); {new_tokens} new tokens returned",
    ]
    print("\n".join(lines), file=sys.stderr)
