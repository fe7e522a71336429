"""What every option check shares, importing nothing of the project: the error of a value that
cannot be used, the one-line exit, and where a key's value came from (the command line or a
config file), which every such line ends with."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

# what an error about a typed value ends with; one from a config file ends with "(in FILE)"
ON_COMMAND_LINE = "(on the command line)"


class OptionError(ValueError):
    """A configuration value that cannot be used; the message names the key and what is allowed."""


def fail(message: str) -> NoReturn:
    """Print ``main.py: error: message`` as one line and exit with status 2."""
    # one line whatever was typed: control characters in a value (a newline, \x1e) are escaped
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    print(f"main.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def typed_on_command_line(key: str, typed: list[str]) -> bool:
    """Whether the command line ``typed`` gives ``key`` itself."""
    return any(item.lstrip("-").split("=", 1)[0] == key for item in typed if item.startswith("-"))


def config_file_of(parser: Any, key: str, typed: list[str]) -> str | None:
    """The config file that set ``key``, unless the command line typed it itself."""
    if typed_on_command_line(key, typed):
        return None
    for source, settings in parser.get_source_to_settings_dict().items():
        if source.startswith("config_file|") and key in settings:
            return source.split("|", 1)[1]
    return None
