"""Loads an ml_collections config file (`get_config()`) without absl flags, for tests and tools."""

import importlib.util
import pathlib

import ml_collections


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """Imports the file at `path` and returns its `get_config()`.

    config_flags needs parsed absl flags; tests, benchmarks and notebooks just need the dict.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist; pass e.g. configs/default.py.")
    spec = importlib.util.spec_from_file_location(f"_marco_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"Config file {path} defines no get_config() function.")
    return module.get_config()
