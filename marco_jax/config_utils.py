"""`--config`: a shipped config by name (`--config default`) or any config file by path, with
`--config.FIELD=VALUE` overrides whose typos are one line naming the nearest field.

The shipped configs are package data (`marco_jax/configs/`), so an installed marco_jax names
them without a checkout. `load_config` gives tests, benchmarks and notebooks the same dict
without absl flags.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pathlib
import re
import sys
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def config_names() -> list[str]:
    """The names of the configs shipped in marco_jax/configs, for `--config NAME`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
    """The file of a shipped config's name, or the path itself when it names a file.

    Raises:
      FileNotFoundError: neither, with the names to choose from.
    """
    text = os.fspath(name_or_path)
    if text in config_names():
        return CONFIG_DIR / f"{text}.py"
    path = pathlib.Path(text)
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"config {text!r} is neither a config file nor one of {', '.join(config_names())}; "
        "pass e.g. --config default or --config path/to/config.py."
    )


def load_config(name_or_path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Imports the config file (a shipped name or a path) and returns its `get_config()`.

    config_flags needs parsed absl flags; tests, benchmarks and notebooks just need the dict.
    """
    path = resolve(name_or_path)
    spec = importlib.util.spec_from_file_location(f"_marco_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"Config file {path} defines no get_config() function.")
    return module.get_config()


def unknown_field(config: Any, dotted: str) -> str | None:
    """Why `dotted` (e.g. "model.depth_multipler") names no field of `config`, with the nearest
    field's name; None when it names one."""
    node, walked = config, "config"
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict | dict):
            return f"{walked} is a value, not a group of fields"
        if part not in node:
            keys = list(node.keys())
            close = difflib.get_close_matches(part, keys, n=1)
            hint = (
                f"did you mean {close[0]}?" if close else f"its fields: {', '.join(keys) or 'none'}"
            )
            return f"{walked} has no field {part!r}; {hint}"
        node, walked = node[part], f"{walked}.{part}"
    return None


class _NamedConfigParser(flags.ArgumentParser):
    """config_flags' file parser behind name resolution and a check of the overrides, so that a
    missing file or a misspelt field is one line (a flags.Error) instead of a deferred error or
    a traceback out of ml_collections."""

    def __init__(self, file_parser: flags.ArgumentParser, name: str):
        self._file_parser = file_parser
        self._name = name

    def parse(self, argument: Any) -> Any:
        if not isinstance(argument, str):
            return self._file_parser.parse(argument)
        spec, colon, arguments = argument.partition(":")  # config_flags' "file.py:arguments"
        try:
            path = resolve(spec)
        except FileNotFoundError as e:
            raise flags.IllegalFlagValueError(f"--{self._name}: {e}") from None
        config = self._file_parser.parse(f"{path}{colon}{arguments}")
        for dotted in self._overrides():
            if problem := unknown_field(config, dotted):
                raise flags.IllegalFlagValueError(f"--{self._name}.{dotted}: {problem}")
        return config

    def _overrides(self) -> list[str]:
        """The `--NAME.FIELD` overrides on the command line, read where config_flags reads them
        (sys.argv)."""
        pattern = re.compile(rf"^-{{1,2}}(no)?{re.escape(self._name)}\.")
        return [arg.split("=", 1)[0].split(".", 1)[1] for arg in sys.argv[1:] if pattern.match(arg)]

    def flag_type(self) -> str:
        return self._file_parser.flag_type()


def define_config_flag(
    fv: flags.FlagValues, help: str, default: str | None = None, name: str = "config"
) -> None:
    """--config NAME|PATH with --config.FIELD=VALUE overrides (config_flags' flag, locked)."""
    help += (
        f" A name ({', '.join(config_names())}) or a .py file; override a field with "
        f"--{name}.FIELD=VALUE."
    )
    config_flags.DEFINE_config_file(
        name,
        str(resolve(default)) if default is not None else None,
        help,
        flag_values=fv,
        lock_config=True,
    )
    fv[name].parser = _NamedConfigParser(fv[name].parser, name)
