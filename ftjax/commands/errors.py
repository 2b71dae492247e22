"""Errors caused by input (a config, data, a model path, a workdir): one line on stderr and
exit status 2 from every command. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys

USAGE_ERROR = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "fix your input" (imported when a command runs)."""
    from ftjax.assets import AssetError
    from ftjax.data.errors import DataError
    from ftjax.io.loading import CheckpointError
    from ftjax.io.tokenizer import TokenizerError
    from ftjax.optim.rules import UnmatchedParamsError
    from ftjax.parallel.mesh import MeshError
    from ftjax.settings import ConfigError

    return (ConfigError, DataError, CheckpointError, TokenizerError, AssetError, MeshError,
            UnmatchedParamsError, FileNotFoundError)


def fail(command: str, err: BaseException) -> int:
    """Say what is wrong on one line of stderr; the exit status for input errors."""
    message = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
    print(f"ftjax {command}: {message}", file=sys.stderr)
    return USAGE_ERROR
