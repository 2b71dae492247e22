"""`ftjax SUBCOMMAND ...`: a thin dispatcher over the library API.

Each subcommand lives in ftjax/commands/<name>.py with `add_arguments(parser)` and `run(args)`;
it is imported only when chosen, so `ftjax --help` stays fast and no subcommand's heavy imports
leak into another's.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "train": "fine-tune a model from an experiment config",
    "pipeline": "train a pipeline's stages in order, each from an earlier stage's weights",
    "eval": "evaluate the latest (or best) checkpoint of a run",
    "generate": "generate text with a pretrained or fine-tuned model",
    "export": "export a model or adapter (HF or PEFT format)",
    "adapters": "list, add or remove the adapters of a store (many adapters for one base)",
    "distill-targets": "write a teacher run's answers to a source's prompts as a data source",
    "teacher-cache": "write a teacher run's outputs on a source's records as a teacher cache",
    "back-translate": "a source's texts translated into a pivot language and back, as a data "
                      "source (augmentation)",
    "fisher": "the diagonal Fisher information of a finished run, for EWC in the runs after it",
    "robustness": "a classifier run's accuracy on perturbed text and under a word-substitution "
                  "attack",
    "demo": "fine-tune MiniLM on the polarity corpus and print the result table",
    "sweep": "compare methods over learning rates and seeds; write tables and plots",
    "config": "show an experiment's resolved config with each key's help",
}


def _module(name: str):
    return importlib.import_module(f"ftjax.commands.{name.replace('-', '_')}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return int(_module(args.command).run(args) or 0)


def entry() -> int:
    """The `ftjax` program: main() in a process of its own, which also keeps jax's compiled
    programs between starts (ftjax.parallel.compile_cache; FTJAX_COMPILE_CACHE=off opts out)."""
    if any(a in SUBCOMMANDS for a in sys.argv[1:]):
        # Imported here, like the subcommands: jax stays out of `ftjax --help`.
        from ftjax.parallel.compile_cache import enable_compile_cache
        enable_compile_cache()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
