"""The one error type of bad configuration."""


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what was expected."""
