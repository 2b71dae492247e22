"""`ftjax back-translate CONFIG --forward MODEL --backward MODEL --out FILE.jsonl`: a source's
records with their texts translated into a pivot language and back (augmentation that keeps
labels; ftjax.generate.back_translation), written as a JSONL data source.

  ftjax back-translate experiments/polarity_minilm.py --out data/polarity_bt.jsonl \\
      --forward smollm2-135m-instruct --forward-template "Translate into Spanish: {text}" \\
      --backward smollm2-135m-instruct --backward-template "Translate into English: {text}" \\
      --chat --limit 500

MODEL: a pretrained name or path, or a finished ftjax run's workdir (a fine-tuned
translator). The records are CONFIG's source's (--set changes them); train on the file as a
local source beside the original one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ftjax.commands.decoding import (
    add_decoding_arguments,
    check_decoding_arguments,
    pick_source,
)
from ftjax.commands.errors import fail, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the experiment whose source's records are translated")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--forward", required=True, help="model into the pivot language")
    parser.add_argument("--backward", required=True, help="model back from it")
    parser.add_argument("--forward-template", default="{text}", metavar="T")
    parser.add_argument("--backward-template", default="{text}", metavar="T")
    parser.add_argument("--chat", action="store_true",
                        help="frame both prompts with the tokenizers' chat templates")
    parser.add_argument("--fields", nargs="+", default=["text"], help="record fields translated")
    add_decoding_arguments(parser, max_new_tokens=96)


def _translator(spec: str, template: str, chat: bool):
    from ftjax.data.prompting import PromptTemplate
    from ftjax.generate.back_translation import Translator
    from ftjax.io.pretrained import load_pretrained
    from ftjax.train.restore import restore_run

    prompt = PromptTemplate(template, chat=chat)
    if (Path(spec) / "config.json").is_file() and (Path(spec) / "checkpoints").is_dir():
        exp, restored = restore_run(spec, full_precision=True)
        if exp.model.head_config.kind != "lm":
            raise ValueError(f"{spec} trained a {exp.model.head_config.kind!r} head, not an LM")
        return Translator(exp.model, restored.state.params, exp.tokenizer, prompt)
    pretrained = load_pretrained(spec)
    if pretrained.model.head_config.kind != "lm":
        raise ValueError(f"{spec} is not a language model")
    return Translator(pretrained.model, pretrained.params, pretrained.tokenizer, prompt)


def run(args: argparse.Namespace) -> int:
    from ftjax.data import ROLES
    from ftjax.generate.back_translation import back_translate
    from ftjax.generate.targets import write_targets
    from ftjax.train.config import load_config
    from ftjax.train.experiment import build_data

    try:
        check_decoding_arguments(args)  # before any model is loaded
        sources = build_data(load_config(args.config, args.set), roles=ROLES)
        source = pick_source(sources, args.source, "the experiment's")
        split = source.splits.get(args.split)
        if split is None:
            raise ValueError(f"source {source.name!r} has no {args.split!r} split")
        records = [dict(split[i]) for i in range(min(args.limit or len(split), len(split)))]
        forward = _translator(args.forward, args.forward_template, args.chat)
        backward = _translator(args.backward, args.backward_template, args.chat)
        rows, kept = back_translate(records, forward, backward, fields=args.fields,
                                    batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens,
                                    num_beams=args.num_beams)
        path = write_targets(rows, args.out, overwrite=args.overwrite)
    except (*user_errors(), ValueError, OSError) as err:
        return fail("back-translate", err)
    print(f"ftjax back-translate: wrote {len(rows)} records to {path} ({kept} kept their text: "
          f"the way back gave nothing)")
    return 0
