"""`ftjax distill-targets CONFIG --workdir TEACHER_RUN --out FILE.jsonl`: a teacher run's
answers to a source's prompts, written as a data source for a student (sequence-level KD).

  ftjax distill-targets experiments/instruct_smollm2.py --workdir runs/teacher \\
      --split train --out data/teacher_answers.jsonl --max-new-tokens 64

The prompts are the teacher's source records (CONFIG with --set changes them, e.g. another
prompts file), rendered as the teacher's run renders them; the file holds the records with the
teacher's greedy (or beam-searched) answers as targets (ftjax.generate.targets). A student
then trains on it as a local source (prompt_column "prompt", text_column "text"; or messages).
"""

from __future__ import annotations

import argparse

from ftjax.commands.decoding import (
    add_decoding_arguments,
    check_decoding_arguments,
    pick_source,
)
from ftjax.commands.errors import fail, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the teacher run's experiment file")
    parser.add_argument("--workdir", required=True, help="the teacher run's directory")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the teacher's config (its data: the prompts to answer)")
    add_decoding_arguments(parser, max_new_tokens=128)
    parser.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")


def run(args: argparse.Namespace) -> int:
    from ftjax.data import ROLES
    from ftjax.generate.targets import teacher_targets, write_targets
    from ftjax.train.config import load_config
    from ftjax.train.restore import restore_run

    try:
        check_decoding_arguments(args)  # before any model is loaded
        cfg = load_config(args.config, args.set)
        exp, restored = restore_run(args.workdir, best=args.best, cfg=cfg, full_precision=True,
                                    roles=ROLES)
        source = pick_source(exp.sources, args.source, "the teacher's")
        rows = teacher_targets(exp.model, restored.state.params, exp.tokenizer, source,
                               args.split, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                               limit=args.limit)
        path = write_targets(rows, args.out, overwrite=args.overwrite)
    except (*user_errors(), ValueError, OSError) as err:
        return fail("distill-targets", err)
    print(f"wrote the teacher's answers to {len(rows)} prompts of {source.name} {args.split} "
          f"(step {restored.step}) to {path}")
    return 0
