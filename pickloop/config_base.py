"""The one base of every stage's settings, and the one way a command line fills them in.

A stage's settings are a ``@dataclass`` that also derives from ``ConfigBase``; each field carries its help
text, units included (``field(default=..., metadata={"help": "..."})``), and optionally ``"choices"`` and
``"flag"`` (a flag name other than the field's, e.g. ``pipeline`` for ``pipeline_dir``). The
base gives every such class the same behaviour:

- construction checks each field's type first (``check_field_types``: one line naming the setting), then
  the class's own ``validate()`` range checks;
- ``from_dict(values)`` refuses an unknown key in one line that names the known settings;
- ``to_dict()`` and ``config_hash()``: the first 16 hex digits of the sha256 of the sorted JSON of the
  settings, less those that do not change the result (``not_hashed``, or ``hash_excluded()`` where that
  depends on the values), with ``{"method": hash_tag}`` added where the class has a tag;
- ``help()``: each setting's help text.

``add_flags(parser, cls, defaults)`` gives a command one ``--kebab-case`` flag per field, with its help
and default, plus ``--config FILE.yaml`` (or a JSON file or JSON object); ``config_from_args(cls, args)``
builds the settings from the class's defaults, then the command's ``defaults``, then the file, then the
flags given explicitly, each overriding the one before. No torch here: ``pickloop --help`` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from pickloop.errors import UserError
from pickloop.typed_config import check_field_types, config_object, field_types

C = TypeVar("C", bound="ConfigBase")


class ConfigBase:
    """Mixin for a ``@dataclass`` of settings (see the module docstring)."""

    section: ClassVar[str] = "config"  # names the settings in messages: "dpo setting steps must be ..."
    hash_tag: ClassVar[str | None] = None  # {"method": hash_tag} joins the hashed settings when set
    not_hashed: ClassVar[tuple[str, ...]] = ()  # settings that change no result stay out of the hash

    def __post_init__(self) -> None:
        check_field_types(self, self.section)
        self.validate()

    def validate(self) -> None:
        """The class's own checks of values and of settings together; raise a one-line UserError."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash_excluded(self) -> tuple[str, ...]:
        """Settings left out of ``config_hash``; override where that depends on the values."""
        return self.not_hashed

    def config_hash(self) -> str:
        """First 16 hex digits of the sha256 of the settings as sorted JSON, to key a run by its configuration."""
        skip = set(self.hash_excluded())
        data = {k: v for k, v in self.to_dict().items() if k not in skip}
        if self.hash_tag is not None:
            data = {"method": self.hash_tag, **data}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each setting's help text (units, meaning), for command lines and docs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from a mapping (a YAML or JSON file, a JSON object, flags); an unknown key is a UserError."""
        if not isinstance(values, dict):
            raise UserError(f"{cls.section} settings must be a mapping of setting names to values")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            hints = [f"{u} -> {m[0]}?" for u in unknown for m in [difflib.get_close_matches(u, names, n=1)] if m]
            raise UserError(f"unknown {cls.section} setting(s): {', '.join(unknown)}"
                            + (f" (did you mean {', '.join(hints)})" if hints else "")
                            + f"; the {cls.section} settings are: {', '.join(names)}")
        return cls(**values)


# ---------------------------------------------------------------- the one command-line parser of settings

def _optional(inner: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else inner(text)

    parse.__name__ = name  # argparse names the type in its message: "invalid int_or_none value: 'x'"
    return parse


def _flag_type(tp: Any) -> tuple[Callable[[str], Any] | None, dict[str, Any]]:
    """(argparse type, extra add_argument keywords) for a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner, extra = _flag_type(args[0]) if len(args) == 1 else (str, {})
        if len(args) < len(typing.get_args(tp)) and inner is not None and not extra:
            return _optional(inner, f"{getattr(inner, '__name__', 'value')}_or_none"), {}
        return inner, extra
    if origin in (tuple, list):
        item, _ = _flag_type(typing.get_args(tp)[0])
        return item, {"nargs": "+"}
    if tp is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str, Path):
        return tp, {}
    return str, {}


def _metavar(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return "|".join(_metavar(a) for a in args) + ("|none" if len(args) < len(typing.get_args(tp)) else "")
    if origin in (tuple, list):
        return _metavar(typing.get_args(tp)[0])
    return {int: "N", float: "X", Path: "PATH"}.get(tp, "TEXT")


def _dest(prefix: str, name: str) -> str:
    return f"{prefix.replace('-', '_')}_{name}" if prefix else name


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type[ConfigBase], defaults: dict[str, Any] | None = None, *,
              prefix: str = "", skip: tuple[str, ...] = (), config: bool = True) -> None:
    """One ``--kebab-case`` flag per field of ``cls`` (``--PREFIX-kebab-case`` with a prefix), its help text
    and its default (the class's, or the command's from ``defaults``), and with ``config`` a ``--config``
    flag; ``config_from_args`` reads them back. A flag not given leaves no value, so a file can fill it."""
    defaults = dict(defaults or {})
    unknown = set(defaults) - {f.name for f in dataclasses.fields(cls)}
    if unknown:  # a programming mistake, not a user's
        raise ValueError(f"defaults for unknown {cls.section} settings: {sorted(unknown)}")
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind, extra = _flag_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if "default" not in help_text or f.name in defaults:  # "(default: shipped)" already says it
            help_text = f"{help_text} (default {_shown(default)})".lstrip()
        kw: dict[str, Any] = {"dest": _dest(prefix, f.name), "help": help_text}
        if "action" in extra:  # a bool: --name / --no-name; None means not given
            kw.update(extra, default=None)
        else:
            kw.update(extra, type=kind, default=argparse.SUPPRESS)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            else:  # the kind of value, not the name again: --lr X, --steps N, --size N|none
                kw["metavar"] = _metavar(hints[f.name])
        name = f.metadata.get("flag", f.name.replace("_", "-"))  # a field may keep an older, shorter flag
        parser.add_argument("--" + (f"{prefix}-" if prefix else "") + name, **kw)
    parser.set_defaults(**{_defaults_dest(cls, prefix): defaults})
    if config:
        parser.add_argument("--config", default=None, metavar="FILE.yaml",
                            help=f"{cls.section} settings from a YAML or JSON file (or a JSON object); "
                                 "flags given beside it override its values")


def _defaults_dest(cls: type, prefix: str) -> str:
    return f"_config_defaults_{cls.__name__}_{prefix.replace('-', '_')}"


def flag_values(cls: type[ConfigBase], args: argparse.Namespace, *, prefix: str = "") -> dict[str, Any]:
    """The settings of ``cls`` given explicitly as flags (those ``add_flags`` made), by field name."""
    hints = field_types(cls)
    given = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, _dest(prefix, f.name), argparse.SUPPRESS)
        if value is argparse.SUPPRESS or (value is None and hints[f.name] is bool):
            continue
        given[f.name] = tuple(value) if isinstance(value, list) else value
    return given


def config_from_args(cls: type[C], args: argparse.Namespace, *, prefix: str = "",
                     file_values: dict[str, Any] | None = None) -> C:
    """Settings from the class's defaults, then the command's (``add_flags(defaults=...)``), then
    ``--config`` (or ``file_values`` where the command reads its file itself), then explicit flags."""
    values = dict(getattr(args, _defaults_dest(cls, prefix), None) or {})
    if file_values is None and getattr(args, "config", None):
        file_values = config_object(args.config)
    if file_values:
        values.update(file_values)
    values.update(flag_values(cls, args, prefix=prefix))
    return cls.from_dict(values)
