"""What the commands that decode a source's records share: their decoding arguments, checked
before any model loads, and the source they name."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_decoding_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    parser.add_argument("--source", help="the source whose records are used (default: the "
                                         "first)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N")
    parser.add_argument("--num-beams", type=int, default=1, metavar="K")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B")
    parser.add_argument("--limit", type=int, default=0, metavar="N",
                        help="only the first N records (0: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def check_decoding_arguments(args: argparse.Namespace) -> None:
    """ValueError for a bad count; OutputExistsError for an --out that may not be written."""
    from ftjax.io.atomic_dir import check_file_target

    if min(args.max_new_tokens, args.num_beams, args.batch_size) < 1 or args.limit < 0:
        raise ValueError("--max-new-tokens, --num-beams and --batch-size must be >= 1, "
                         "--limit >= 0")
    check_file_target(args.out, overwrite=args.overwrite)


def pick_source(sources: Sequence, name: str | None, whose: str):
    """The source named `name` (None: the first) among `sources`, else ValueError."""
    names = [s.name for s in sources]
    name = name or names[0]
    if name not in names:
        raise ValueError(f"--source {name!r}: {whose} sources are {names}")
    return sources[names.index(name)]
