"""Command-line flags generated from the settings declared in ``urbansound.config``; configuration files.

A dataclass field declared with ``config.setting(default, help, flags=..., choices=...)`` becomes one flag:
its spellings, help, allowed values and type (from the annotation) come from the declaration, so a new
setting is one new field. Flags that are not given leave no attribute on the parsed namespace (their
argparse default is ``SUPPRESS``): "unset" means "keep the base configuration's value" (a recipe's, or a
configuration file's), and ``apply_setting_arguments`` writes only what was given.

Why a small generator of our own rather than jsonargparse or tyro: neither is installed, and ~40 flags over
six dataclasses need only what is below (typed conversion, choices with aliases, repeatable KEY=VALUE);
a dependency would be more to pin and learn than this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Container, Iterator, Mapping
from pathlib import Path
from typing import Any

from urbansound.config import RunConfig
from urbansound.errors import ConfigError

YAML_SUFFIXES = (".yaml", ".yml")


def setting_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """``(path, field, type)`` of every declared setting of dataclass ``cls``, nested sections included;
    ``path`` is dotted (``training.batch_size``) and is also the flag's argparse ``dest``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            yield from setting_fields(annotation, f"{prefix}{f.name}.")
        elif f.metadata.get("help"):
            yield f"{prefix}{f.name}", f, annotation


def get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set_path(obj: Any, path: str, value: Any) -> None:
    *sections, name = path.split(".")
    for part in sections:
        obj = getattr(obj, part)
    setattr(obj, name, value)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _optional_inner(annotation: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1 and len(typing.get_args(annotation)) == 2:
            return rest[0]
    return None


def _converter(annotation: Any, f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    """The argparse ``type`` for a field: plain, ``X | None`` (the word ``none``), comma-separated lists,
    and declared choices (with aliases), each failing with a message that says what was expected."""
    inner = _optional_inner(annotation)
    if inner is not None:
        convert_inner = _converter(inner, f)

        def optional(text: str) -> Any:
            return None if text.strip().lower() == "none" else convert_inner(text)

        return optional
    choices, aliases = f.metadata.get("choices"), f.metadata.get("aliases") or {}
    if choices:
        label = f.metadata.get("label") or f.name

        def choice(text: str) -> str:
            value = aliases.get(text, text)
            if value not in choices:
                also = f" (or {', '.join(aliases)})" if aliases else ""
                raise argparse.ArgumentTypeError(
                    f"unknown {label} {text!r}; choose one of {', '.join(choices)}{also}"
                )
            return value

        return choice
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)

        def items(text: str) -> list[Any]:
            try:
                return [item(part) for part in text.split(",") if part.strip()]
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected comma-separated {item.__name__} values, got {text!r}"
                ) from None

        return items
    if typing.get_origin(annotation) is dict:
        return _key_value
    scalar: Callable[[str], Any] = annotation

    def plain(text: str) -> Any:
        try:
            return scalar(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {scalar.__name__}, got {text!r}") from None

    return plain


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word is a string (e.g. time_pooling=max)


def add_setting_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Any,
    *,
    include: Callable[[str], bool] | None = None,
    required: Container[str] = (),
    titles: dict[str, str] | None = None,
    alternatives: Mapping[str, Any] | None = None,
) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag for every declared setting of ``cls`` (those ``include(path)`` accepts) to ``parser``.

    ``defaults`` (an instance of ``cls``) supplies the defaults shown in ``--help``, and each of
    ``alternatives`` (name -> instance, e.g. another recipe's settings) its value where that differs, as
    ``(default: 22050; baseline recipe: 44100)``; the parsed namespace holds only the flags given.
    Groups are titled by the field's ``group``, else ``titles[section]``.
    Returns the argument groups by title, so the caller can add its own flags to them.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for path, f, annotation in setting_fields(cls):
        if include is not None and not include(path):
            continue
        section = path.rpartition(".")[0]
        title = f.metadata.get("group") or (titles or {}).get(section) or section or "settings"
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        flags = f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)
        text = f.metadata["help"].replace("%", "%%")
        default = get_path(defaults, path)
        if default not in ("", {}):
            others = [
                f"; {name}: {_show(get_path(other, path))}"
                for name, other in (alternatives or {}).items()
                if get_path(other, path) != default
            ]
            text += f" (default: {_show(default)}{''.join(others)})"
        kwargs: dict[str, Any] = {"dest": path, "default": argparse.SUPPRESS, "help": text}
        if path in required:
            kwargs["required"] = True
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _converter(annotation, f)
            if typing.get_origin(annotation) is dict:
                kwargs["action"] = "append"
            choices = f.metadata.get("choices")
            shown = "{" + ",".join(choices) + "}" if choices else f.name.upper()
            kwargs["metavar"] = f.metadata.get("metavar") or shown
        groups[title].add_argument(*flags, **kwargs)
    return groups


def apply_setting_arguments(config: Any, args: argparse.Namespace) -> set[str]:
    """Write every setting flag present in ``args`` into ``config`` (a dict setting is updated with the
    repeated KEY=VALUE pairs); returns the paths that were given."""
    given = set()
    for path, _, annotation in setting_fields(type(config)):
        if not hasattr(args, path):
            continue
        value = getattr(args, path)
        if typing.get_origin(annotation) is dict:
            value = {**get_path(config, path), **dict(value)}
        _set_path(config, path, value)
        given.add(path)
    return given


def _unknown_keys(cls: type, data: dict[str, Any], prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    unknown = []
    for key, value in data.items():
        if key not in hints:
            unknown.append(prefix + key)
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            unknown += _unknown_keys(hints[key], value, f"{prefix}{key}.")
    return unknown


def load_config_file(path: Path) -> RunConfig:
    """A run configuration from a run's ``config.json``, a cross-validation's ``crossval.json``, or YAML
    (with PyYAML installed). Keys this version does not know are an error: in an edited file, typos."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror or error}") from None
    if Path(path).suffix.lower() in YAML_SUFFIXES:
        yaml = _yaml(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if set(data) == {"config", "folds"}:  # a cross-validation's crossval.json
        data = data["config"]
    unknown = _unknown_keys(RunConfig, data)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    try:
        return RunConfig.from_dict(data)
    except TypeError as error:
        raise ConfigError(f"{path}: {error}") from None


def dump_config(config: RunConfig, destination: str) -> None:
    """Write ``config``: ``-`` is JSON to stdout; a file ending in .yaml/.yml is YAML (needs PyYAML);
    any other file is JSON."""
    data = config.to_dict()
    if destination != "-" and Path(destination).suffix.lower() in YAML_SUFFIXES:
        text = _yaml(destination).safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    if destination == "-":
        sys.stdout.write(text)
        return
    from urbansound.io_utils import atomic_write_text

    atomic_write_text(Path(destination), text)


def _yaml(path: str | Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: YAML needs PyYAML (pip install pyyaml); JSON works without it") from None
    return yaml
