"""Typed configuration: dataclasses per component, merged from YAML and ``key=value`` overrides.

Every component of slowfast_vgen has one ``@dataclass`` config with help text in its field
metadata, validated in ``__post_init__``. :func:`load_config` merges, in order, the dataclass
defaults, an optional YAML file and command-line ``key=value`` overrides with OmegaConf in
structured mode, so an unknown key or a wrong type is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserInputError

T = TypeVar("T")


def help_field(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with ``metadata={"help": ...}`` (mutable defaults via ``default_factory``)."""
    if isinstance(default, (list, dict, tuple)) and "default_factory" not in kwargs:
        value = default
        kwargs["default_factory"] = lambda: type(value)(value)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def load_config(
    cls: type[T],
    yaml_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    defaults: dict | None = None,
) -> T:
    """Build ``cls`` from its defaults, ``defaults`` (e.g. a model's recommended settings), a YAML
    file and ``key=value`` overrides (dotted keys allowed), later layers winning.

    Raises :class:`UserInputError` naming the offending key or file.
    """
    schema = OmegaConf.structured(cls)
    layers = [schema]
    if defaults:
        layers.append(OmegaConf.create(defaults))
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise UserInputError(f"config file not found: {path}")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as err:  # yaml.YAMLError and friends
            raise UserInputError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise UserInputError(f"override {bad[0]!r} is not of the form key=value")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise UserInputError(f"bad config: {_first_line(err)}") from None
    except ValueError as err:  # raised by a dataclass __post_init__
        raise UserInputError(f"bad config: {err}") from None


def config_from_dict(cls: type[T], values: dict) -> T:
    """Rebuild ``cls`` from a plain dict (e.g. a saved resolved config), with the same checks."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(values)))  # type: ignore
    except OmegaConfBaseException as err:
        raise UserInputError(f"bad config: {_first_line(err)}") from None
    except ValueError as err:
        raise UserInputError(f"bad config: {err}") from None


def config_to_yaml(config: Any) -> str:
    """The resolved config as YAML text (saved next to every output)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved config atomically as YAML."""
    from .io_utils import atomic_write_text

    atomic_write_text(path, config_to_yaml(config))


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
