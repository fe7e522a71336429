"""One registry mapping model names to builders.

A builder's signature is its defaults: ``build_model`` passes it only the keyword arguments it
declares, so a new option never reaches a model that did not ask for it. Each model also declares
its target type ("heatmap" or "regression"); codecs, losses and metrics are chosen from that.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

TARGET_TYPES = ("heatmap", "regression")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    target_type: str

    def parameter_names(self) -> list[str]:
        return list(inspect.signature(self.builder).parameters)


_REGISTRY: dict[str, ModelEntry] = {}
_LOOKUP: dict[str, str] = {}  # lower-cased name -> canonical name


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_model(
    name: str, *, target: str = "heatmap"
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder`` under ``name`` (looked up case-insensitively)."""
    if target not in TARGET_TYPES:
        raise ValueError(f"target must be one of {TARGET_TYPES}, got {target!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name.lower() in _LOOKUP:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, builder, target)
        _LOOKUP[name.lower()] = name
        return builder

    return decorate


def _ensure_models_imported() -> None:
    # Importing the package runs every @register_model decorator.
    import models  # noqa: F401


def list_models() -> list[str]:
    _ensure_models_imported()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """Registry entry for ``name`` (case-insensitive)."""
    _ensure_models_imported()
    canonical = _LOOKUP.get(str(name).lower())
    if canonical is None:
        choices = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(choices)}{hint}")
    return _REGISTRY[canonical]


def target_type_of(name: str) -> str:
    return get_entry(name).target_type


def option_to_parameter(option: str) -> str:
    """Config option spelling -> builder parameter: ``nChannels`` -> ``n_channels``, ``LRNSize`` -> ``lrn_size``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", option).lower()


def build_model(name: str, **options: Any) -> nn.Module:
    """Build model ``name`` from config options, passing only those its builder declares.

    Options may use the config spelling (``nStack``) or the parameter spelling (``n_stack``);
    options set to ``None`` are left to the builder's default.
    """
    entry = get_entry(name)
    wanted = set(entry.parameter_names())
    kwargs = {}
    for key, value in options.items():
        parameter = key if key in wanted else option_to_parameter(key)
        if parameter in wanted and value is not None:
            kwargs[parameter] = value
    model = entry.builder(**kwargs)
    model.target_type = entry.target_type
    return model
