"""The bottom floor: config schemas written once, config files, their checks and overrides.

Knows nothing of models, data or training: the run's own schema (ftjax.train.config.RunConfig)
is a tree of the blocks each floor declares beside its code, handed to these functions.
"""

from ftjax.settings.blocks import from_config
from ftjax.settings.errors import ConfigError
from ftjax.settings.files import (
    apply_overrides,
    config_from_dict,
    import_config_file,
    import_experiment_file,
    load_config,
    parse_override,
    split_config_arg,
)
from ftjax.settings.schema import Key, Schema, closest_key, setting

__all__ = [
    "ConfigError", "Key", "Schema", "apply_overrides", "closest_key", "config_from_dict",
    "from_config", "import_config_file", "import_experiment_file", "load_config", "parse_override", "setting",
    "split_config_arg",
]
