"""`ftjax config show EXPERIMENT [--set key=value ...]`: the resolved config, key by key, with
each key's help; keys that differ from the schema's default are marked with `*`."""

from __future__ import annotations

import textwrap

from ftjax.commands.errors import fail, user_errors


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved config with each key's help")
    show.add_argument("config", help="experiment file (file.py or file.py:variant)")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key (repeatable), as in `ftjax train`")
    show.add_argument("--no-help", action="store_true", help="keys and values only")


def render(cfg, *, with_help: bool = True, width: int = 100) -> str:
    """The config as `key = value  # help` lines, `*` before keys that differ from default."""
    from ftjax.train.config import SCHEMA

    defaults = {key: value for key, value, _ in SCHEMA.describe(SCHEMA.defaults())}
    lines = []
    for key, value, help_text in SCHEMA.describe(cfg):
        changed = key not in defaults or defaults[key] != value
        line = f"{'*' if changed else ' '} {key} = {value!r}"
        lines.append(line)
        if with_help and help_text:
            for part in textwrap.wrap(help_text, width - 6):
                lines.append(f"      # {part}")
    return "\n".join(lines)


def run(args) -> int:
    from ftjax.train.config import load_config

    try:
        cfg = load_config(args.config, args.set)
    except user_errors() as err:
        return fail("config", err)
    print(render(cfg, with_help=not args.no_help))
    return 0
