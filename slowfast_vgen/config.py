"""Typed configuration: dataclasses per component, merged from YAML and ``key=value`` overrides.

Every component of slowfast_vgen has one ``@dataclass`` config with help text in its field
metadata, validated in ``__post_init__``. :func:`load_config` merges, in order, the dataclass
defaults, an optional YAML file and command-line ``key=value`` overrides with OmegaConf in
structured mode, so an unknown key or a wrong type is an error naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserInputError, first_line

T = TypeVar("T")

SEED_RANGE = (-(2**63), 2**64 - 1)
"""Seeds ``torch.Generator.manual_seed`` accepts (a negative seed counts modulo 2**64)."""


def check_seed(seed: int, name: str = "seed") -> None:
    """``ValueError`` naming ``name`` when ``seed`` is outside :data:`SEED_RANGE`."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise ValueError(f"{name} must be an integer in [-2**63, 2**64 - 1], got {seed}")


def config_error(err: OmegaConfBaseException) -> str:
    """OmegaConf's reason in one line, naming the key it concerns (its first line alone often does not:
    ``Value '2.5' of type 'float' could not be converted to Integer``)."""
    message = first_line(err)
    key = getattr(err, "full_key", None)
    return f"{key}: {message}" if key and str(key) not in message else message


def literal(values: Any) -> Any:
    """``values`` (nested dicts and lists) with every ``${`` escaped, so OmegaConf keeps strings as written:
    settings read from files (a model's ``slowfast_vgen.json``, a saved session) are data, and an
    interpolation such as ``${oc.env:HOME}`` in them read the environment (and showed it in errors)."""
    import re

    if isinstance(values, dict):
        return {key: literal(value) for key, value in values.items()}
    if isinstance(values, (list, tuple)):
        return [literal(value) for value in values]
    if isinstance(values, str) and "${" in values:  # backslashes before an escaped ${ are doubled (OmegaConf's rule)
        return re.sub(r"(\\*)\$\{", lambda match: match.group(1) * 2 + "\\${", values)
    return values


def help_field(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with ``metadata={"help": ...}`` (mutable defaults via ``default_factory``)."""
    if isinstance(default, (list, dict, tuple)) and "default_factory" not in kwargs:
        value = default
        kwargs["default_factory"] = lambda: type(value)(value)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def add_dataclass_arguments(
    parser: Any,
    cls: type,
    exclude: Sequence[str] = (),
    flags: Mapping[str, str] | None = None,
    runtime_defaults: Mapping[str, str] | None = None,
    metavars: Mapping[str, str] | None = None,
) -> None:
    """Add one ``--field-name`` option per field of dataclass ``cls`` to an argparse ``parser``.

    Help and default come from the field (:func:`help_field`), the value type from its
    annotation: ``int``/``float``/``str`` (or ``X | None``) take one value, a ``bool`` defaulting
    to False is a ``--field-name`` switch and one defaulting to True a ``--no-field-name`` switch,
    a ``list`` is repeatable (``--field-name A --field-name B``). Fields without a default are
    required. ``exclude`` names fields left out; ``flags`` renames options (``{"world_overrides":
    "--set"}``); ``runtime_defaults`` names fields whose default the caller computes at run time:
    their option defaults to ``None`` and its help says ``(default: <text>)``; ``metavars`` sets
    the value's name in the usage text.
    """
    flags = dict(flags or {})
    runtime_defaults = dict(runtime_defaults or {})
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        flag = flags.get(field.name, "--" + field.name.replace("_", "-"))
        help_text = field.metadata.get("help", "")
        kind = _argument_type(hints[field.name], cls, field.name)
        default = _field_default(field)
        options: dict[str, Any] = {"dest": field.name}
        if metavars and field.name in metavars:
            options["metavar"] = metavars[field.name]
        if field.name in runtime_defaults:
            default_text = runtime_defaults[field.name]
            default = None
        elif default is dataclasses.MISSING:
            default_text = None
            options["required"] = True
        else:
            default_text = default
        if kind is bool:
            if default:
                flag = flags.get(field.name, "--no-" + field.name.replace("_", "-"))
                options.update(action="store_false", default=True)
            else:
                options.update(action="store_true", default=False)
            default_text = None
        elif kind is list:
            options.update(action="append", default=list(default) if default is not dataclasses.MISSING else [])
            options.pop("required", None)
            default_text = None
            help_text += " (repeatable)"
        else:
            options["type"] = kind
            if default is not dataclasses.MISSING:
                options["default"] = default
        if default_text is not None:
            help_text += f" (default: {default_text})"
        parser.add_argument(flag, help=help_text, **options)


def _field_default(field: dataclasses.Field) -> Any:
    """A dataclass field's default value (its factory called), or ``dataclasses.MISSING`` if it is required."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def config_keys_help(cls: type, prefix: str = "") -> list[str]:
    """One ``key (default: value): help`` line per leaf field of dataclass ``cls``, nested
    dataclasses as dotted keys: the keys a YAML file or a ``key=value`` override of
    :func:`load_config` may set, with the help text of :func:`help_field`."""
    lines = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key, kind = prefix + field.name, hints[field.name]
        if dataclasses.is_dataclass(kind):
            lines += config_keys_help(kind, key + ".")
            continue
        default = _field_default(field)
        default = "required" if default is dataclasses.MISSING else f"default: {default!r}"
        help_text = field.metadata.get("help", "")
        lines.append(f"{key} ({default})" + (f": {help_text}" if help_text else ""))
    return lines


def dataclass_from_args(cls: type[T], args: Any, **values: Any) -> T:
    """``cls`` built from the fields an argparse namespace holds (see :func:`add_dataclass_arguments`),
    ``values`` winning; a ``None`` option (a run-time default left unset) must be given in ``values``."""
    kwargs = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls) if hasattr(args, field.name)}
    kwargs.update(values)
    return cls(**kwargs)


def _argument_type(annotation: Any, cls: type, name: str) -> type:
    """The argparse value type of a field annotation: int, float, str, bool or list."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    origin = typing.get_origin(annotation) or annotation
    if origin in (int, float, str, bool, list):
        return origin
    raise TypeError(f"{cls.__name__}.{name}: no command-line option for a field of type {annotation}")


def load_config(
    cls: type[T],
    yaml_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    defaults: dict | None = None,
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from its defaults, ``defaults`` (e.g. a model's recommended settings), a YAML
    file, ``key=value`` overrides (dotted keys allowed) and ``flags`` (dotted key -> value, e.g. what
    command-line flags set; ``None`` values are left out), later layers winning. Flag values are
    taken as given, not read as YAML (``--scheduler off`` is the text ``off``, not false).

    Raises :class:`UserInputError` naming the offending key or file.
    """
    schema = OmegaConf.structured(cls)
    layers = [schema]
    if defaults:
        layers.append(OmegaConf.create(literal(defaults)))
    if yaml_path is not None:
        path = Path(yaml_path)
        if path.is_dir():
            raise UserInputError(f"config file {path} is a directory: give a YAML file")
        if not path.is_file():
            raise UserInputError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # yaml.YAMLError and friends; a scalar ("42") is refused by OmegaConf here
            if "Invalid loaded object type" in str(err):  # an OSError, from OmegaConf
                raise UserInputError(f"bad config: {path} must hold a mapping of keys, got a single value") from None
            raise UserInputError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, DictConfig):  # a top-level list: OmegaConf.merge raises a TypeError
            raise UserInputError(f"bad config: {path} must hold a mapping of keys, got a list")
        _keep_words(cls, loaded, path.read_text(encoding="utf-8"))
        layers.append(loaded)
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise UserInputError(f"override {bad[0]!r} is not of the form key=value")
    overrides = [_word_kept(cls, item) for item in overrides]
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except Exception:  # a value that is not YAML (`variants=[a,,b]`): yaml's ParserError, no OmegaConf error
            for item in overrides:  # name the one that fails
                try:
                    OmegaConf.from_dotlist([item])
                except Exception as err:
                    raise UserInputError(f"bad override {item!r}: its value is not valid YAML ({first_line(err)})") from None
            raise
    for layer in layers[1:]:
        _check_switches(cls, OmegaConf.to_container(layer, resolve=False))
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    if given:
        flag_layer = OmegaConf.create()
        for key, value in given.items():
            OmegaConf.update(flag_layer, key, literal(value))  # a dotted key makes its parents
        layers.append(flag_layer)
    try:
        merged = _merge(*layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise UserInputError(f"bad config: {config_error(err)}") from None
    except ValueError as err:  # raised by a dataclass __post_init__
        raise UserInputError(f"bad config: {err}") from None


YAML_BOOLEAN_WORDS = ("y", "yes", "n", "no", "on", "off", "true", "false")
"""Words YAML 1.1 (OmegaConf's dotlists) reads as true or false."""


def _field_hint(cls: type, dotted: str) -> Any:
    """The annotation of the dataclass field ``dotted`` (``a.b.c``) of ``cls``, ``None`` where there is none."""
    hint: Any = cls
    for name in dotted.split("."):
        if not dataclasses.is_dataclass(hint):
            return None
        hint = typing.get_type_hints(hint).get(name)
    return hint


def _word_kept(cls: type, item: str) -> str:
    """``key=value`` with a true/false word quoted where ``key`` is a text field: ``fast.mode=no`` became
    false and then ``off``; ``fast.mode=off`` stays the text ``off``."""
    key, _, value = item.partition("=")
    if value.strip().lower() in YAML_BOOLEAN_WORDS and _field_hint(cls, key.strip()) in (str, str | None):
        import json

        return f"{key}={json.dumps(value.strip())}"
    return item


def _keep_words(cls: type, loaded: DictConfig, text: str) -> None:
    """Put back, in ``loaded`` (a YAML file as OmegaConf read it), the text of every true/false word that
    sits under a text field of ``cls``: ``mode: no`` was read as false and then meant ``off``, as in
    :func:`_word_kept`. Walks YAML's node tree, which keeps each scalar as written."""
    import yaml

    bool_tag = "tag:yaml.org,2002:bool"

    def walk(hint: Any, node: Any, target: Any) -> None:
        if not (dataclasses.is_dataclass(hint) and isinstance(node, yaml.MappingNode) and isinstance(target, DictConfig)):
            return
        hints = typing.get_type_hints(hint)
        for key_node, value_node in node.value:
            name = key_node.value
            field = hints.get(name)
            if field is None or name not in target:
                continue
            if field in (str, str | None) and isinstance(value_node, yaml.ScalarNode) and value_node.tag == bool_tag:
                target[name] = value_node.value
            elif typing.get_origin(field) is list and typing.get_args(field) == (str,) and isinstance(value_node, yaml.SequenceNode):
                for index, item in enumerate(value_node.value):
                    if isinstance(item, yaml.ScalarNode) and item.tag == bool_tag:
                        target[name][index] = item.value
            else:
                walk(field, value_node, target[name])

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # OmegaConf read it; a node tree it cannot give leaves the values as read
        return
    walk(cls, root, loaded)


def _check_switches(cls: type, values: Any, prefix: str = "") -> None:
    """Refuse a number given to a ``bool`` field of dataclass ``cls`` (OmegaConf turns ``compile=2`` into true)."""
    if not (dataclasses.is_dataclass(cls) and isinstance(values, dict)):
        return
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(str(key))
        if hint is bool and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise UserInputError(f"bad config: {prefix}{key} is true or false, got {value}")
        if dataclasses.is_dataclass(hint):
            _check_switches(hint, value, f"{prefix}{key}.")


def keys_set(yaml_path: str | os.PathLike | None, overrides: Sequence[str]) -> list[str]:
    """The dotted keys ``key=value`` overrides and a YAML config file set (leaves, in that order, once each). A
    file that cannot be read adds none: :func:`load_config` reports it."""
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                keys.append(prefix + str(key))

    for item in overrides:  # `generation={seed: 5}` sets generation.seed too
        try:
            walk(OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False), "")
        except Exception:  # not YAML: load_config names it
            keys.append(item.split("=", 1)[0].strip())
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(yaml_path), resolve=False) if yaml_path is not None else {}
    except Exception:  # missing, not YAML, not UTF-8
        loaded = {}
    if isinstance(loaded, dict):
        walk(loaded, "")
    return list(dict.fromkeys(keys))


def _merge(*layers: Any) -> Any:
    """``OmegaConf.merge``, whose plain ``TypeError`` for a mapping given where a list is expected (or the
    reverse: ``sample_actions={a: 1}``) becomes a one-line :class:`UserInputError`."""
    try:
        return OmegaConf.merge(*layers)
    except TypeError as err:
        raise UserInputError(f"bad config: {first_line(err)} (a mapping given where a list is expected, or the "
                             "reverse)") from None


def config_from_dict(cls: type[T], values: dict) -> T:
    """Rebuild ``cls`` from a plain dict (e.g. a saved resolved config), with the same checks; its strings
    are taken as written (:func:`literal`)."""
    try:
        return OmegaConf.to_object(_merge(OmegaConf.structured(cls), OmegaConf.create(literal(values))))  # type: ignore
    except OmegaConfBaseException as err:
        raise UserInputError(f"bad config: {config_error(err)}") from None
    except ValueError as err:
        raise UserInputError(f"bad config: {err}") from None


def config_as_dict(config: Any) -> dict:
    """The resolved config as a plain JSON-able dict (what a checkpoint records of its run)."""
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def config_differences(saved: dict, config: Any, may_change: Sequence[str] = ()) -> list[str]:
    """``"seed 5 (saved: 0)"`` for every dotted key whose value differs between the dict ``saved``
    (:func:`config_as_dict` of an earlier run) and ``config``, except the keys in ``may_change``
    (a key also covers the keys under it); a key only one side has counts as differing."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    old, new = flat(saved), flat(config_as_dict(config))
    free = tuple(may_change)
    return [f"{key} {new.get(key, '(none)')} (saved: {old.get(key, '(none)')})" for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and not any(key == k or key.startswith(k + ".") for k in free)]


def check_same_run(checkpoint: Any, saved: dict, config: Any, may_change: Sequence[str] = (),
                   more: Sequence[str] = ()) -> None:
    """A one-line :class:`UserInputError` when resuming ``checkpoint`` (whose run recorded ``saved``,
    :func:`config_as_dict`) with ``config`` would make it another run: any key outside ``may_change``
    differs (:func:`config_differences`), or one of the trainer's own findings ``more`` applies."""
    differences = [*config_differences(saved, config, may_change), *more]
    if differences:
        raise UserInputError(f"checkpoint {checkpoint} continues a run made with other settings: {', '.join(differences)}; "
                             "resume with its settings, or give a new output_dir")


def config_to_yaml(config: Any) -> str:
    """The resolved config as YAML text (saved next to every output)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved config atomically as YAML."""
    from .io_utils import atomic_write_text

    atomic_write_text(path, config_to_yaml(config))


class ConfigKeysParser(argparse.ArgumentParser):
    """An argument parser whose ``--help`` ends with every key of its config dataclass
    (:func:`config_keys_help`). ``config_class`` is the class or ``"module:Class"`` of this package,
    imported only when the help is printed, so building a command line stays free of torch."""

    config_class: type | str | None = None
    keys_note: str = ""  # a line printed under the keys' header (where the defaults below are replaced)

    def format_help(self) -> str:
        text = super().format_help()
        cls = self.config_class
        if cls is None:
            return text
        if isinstance(cls, str):
            module, name = cls.split(":")
            cls = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        keys = "\n".join("  " + line for line in config_keys_help(cls))
        note = f"  {self.keys_note}\n" if self.keys_note else ""
        return f"{text}\nconfig keys (in the --config YAML file or as key=value overrides):\n{note}{keys}\n"
