"""One way for every typed config dataclass to check its fields' types before its own range checks.

A config built from JSON, YAML or the command line can hold anything: ``{"steps": "abc"}``,
``{"rank": 1.5}``, ``{"steps": 1e999}`` (JSON reads it as infinity) or ``{"targets": 5}``. Each config's
``__post_init__`` calls ``check_field_types(self, "dpo")`` first, so a wrong type is one line naming
the setting, never a ``TypeError`` deep inside training after the model has loaded. Nothing is
silently converted, except a list given for a tuple setting (JSON has no tuples); an integer is a
valid value of a float setting.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from pickloop.errors import UserError, one_line


@lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of dataclass ``cls`` (``from __future__ import annotations`` leaves text)."""
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a finite number", str: "text", bool: "true or false",
            type(None): "null", Path: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fits(value: Any, tp: Any) -> tuple[bool, Any]:
    """(does ``value`` fit type ``tp``, the value to keep: a list for a tuple setting becomes a tuple)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, kept = _fits(value, arg)
            if ok:
                return True, kept
        return False, value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            return False, value
        item = typing.get_args(tp)[0]
        kept = []
        for v in value:
            ok, k = _fits(v, item)
            if not ok:
                return False, value
            kept.append(k)
        return True, tuple(kept) if origin is tuple else kept
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:  # bool is an int subclass in Python, never a count
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:  # an int stays an int (config hashes of {"beta": 5000} do not change)
            return math.isfinite(value), value
        except OverflowError:  # an integer too large for a float
            return False, value
    if tp is str:
        return isinstance(value, str), value
    if tp is Path:  # a path from JSON or YAML is text
        return isinstance(value, (str, Path)), Path(value) if isinstance(value, str) else value
    return True, value  # a type this checker does not know: the config's own checks decide


def check_field_types(obj: Any, section: str) -> None:
    """Raise a one-line UserError for the first field of dataclass ``obj`` whose value does not fit its
    annotation (int, finite float, str, bool, ``X | None``, ``tuple[str, ...]``); a list given for a
    tuple field becomes a tuple."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, kept = _fits(value, hints[f.name])
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise UserError(f"{section} setting {f.name} must be {_type_name(hints[f.name])}, not {shown}")
        if kept is not value:
            object.__setattr__(obj, f.name, kept)


# ---------------------------------------------------------------- argparse types: refused while parsing

def int_at_least(lo: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``lo`` (``--threads 0`` is refused as the arguments are read)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {lo}, not {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {lo}, not {value}")
        return value

    parse.__name__ = f"int_at_least_{lo}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers such as ``1234,5678``."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, not {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one whole number")
    return values


CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """PyYAML's safe loader, but ``1e-5`` is a number as in JSON and YAML 1.2 (PyYAML reads it as text)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def config_object(text: str) -> dict:
    """A ``--config`` value: a JSON object of config fields, or the path of a YAML (or JSON) file holding
    one (``--config run.yaml``); anything else is a one-line user mistake."""
    if text.strip().lower().endswith(CONFIG_FILE_SUFFIXES):
        import yaml

        try:
            data = yaml.load(Path(text.strip()).expanduser().read_text(encoding="utf-8"), Loader=_yaml_loader())
        except OSError as e:
            raise UserError(f"--config file {text} cannot be read: {e.strerror or e}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"--config file {text} is not valid YAML: {one_line(str(e))}") from None
        if not isinstance(data, dict):
            raise UserError(f"--config file {text} must hold a mapping of config fields")
        return data
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"--config must be a JSON object or a .yaml file: {e}") from None
    if not isinstance(data, dict):
        raise UserError("--config must be a JSON object of config fields or a .yaml file")
    return data
