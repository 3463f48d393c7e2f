"""``config.toml``: the schema (``schema``), reading and checking (``parse``, ``check``, ``load``) and
editing one value in place (``edit``). Importers take the names below from here."""

from trainconsole.engine.config.edit import lookup_key, parse_value, set_value
from trainconsole.engine.config.load import (
    Config,
    ConfigError,
    ConfigProblems,
    ConfigUnreadable,
    check_warnings,
    default_config_text,
    load_config,
    parse_config_text,
)

__all__ = ["Config", "ConfigError", "ConfigProblems", "ConfigUnreadable", "check_warnings",
           "default_config_text", "load_config", "lookup_key", "parse_config_text", "parse_value",
           "set_value"]
