"""One registry mapping model names to builders.

A builder's signature is its defaults: ``build_model`` passes it only the keyword arguments it
declares, so a new option never reaches a model that did not ask for it. Each model also declares
its target type ("heatmap", "regression", "simcc" or "compositional"); codecs, losses and metrics are
chosen from that.

A "simcc" model (SimCC, Li et al. ECCV 2022: a 1-D classification per axis) returns as each stage
output one tensor (N, K, Wx + Wy): the x vectors (Wx = round(input width x split ratio) bins) then
the y vectors (Wy = round(input height x split ratio)), so a stage output stays one tensor as the
loop, the flip test and the profiler expect; the codec splits it.

A "compositional" model (DLCM, Tang et al. ECCV 2018) predicts a hierarchy of parts, one stage per
level bottom-up then top-down, each stage output (N, K_l, H, W) with its level's K_l maps; the
last stage is the joints' heatmaps (see ``datasets.codecs.CompositionalCodec``).

A heatmap model (any whose target type decodes heatmaps: ``datasets.codecs.decodes_heatmaps``) also states which
``inputRes / outputRes`` strides it can produce and, when it halves its heatmap-sized features
internally (an hourglass), the option counting the halvings, so
``utils.option_checks.check_model_sizes`` refuses a configuration it cannot build before anything is built.

Three declarations let a model whose stages are iterations (IEF) use the one loop unchanged:
``trains_with_target``: in training, ``engine.train_one_epoch`` calls ``model(image, target)`` (the
codec's targets; teacher forcing), everywhere else ``model(image)``. ``stage_metrics``: its stage
outputs are predictions of the same kind, and validation scores each one (the dataset's main
metric per stage, ``<metric>_<label><stage>``, e.g. ``PCKh_iter1``). ``uses_training_poses``: the
model has ``set_start_pose``, which ``build.build_run`` gives the median training pose. A model
that defines ``set_epoch(epoch)`` is told each training epoch before it runs, as the datasets are.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from datasets.codecs import target_types
from utils.registry import Registry, UnknownNameError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    target_type: str
    # inputRes / outputRes values the model can produce; None: not stated (a regressor has no
    # heatmap; an undeclared heatmap model is checked against its built output instead)
    output_strides: tuple[int, ...] | None = None
    # the option counting how often the model halves its heatmap-sized features (each halving
    # needs at least 2 pixels on both axes); None: it does not
    heatmap_halvings: str | None = None
    # see the module docstring
    trains_with_target: bool = False
    stage_metrics: str | None = None
    uses_training_poses: bool = False

    def parameter_names(self) -> list[str]:
        return list(inspect.signature(self.builder).parameters)

    def output_ratios(self) -> str:
        """The ``outputRes / inputRes`` ratios it accepts, e.g. ``1/4 or 1/8``; ``any`` if not stated."""
        if self.output_strides is None:
            return "any"
        ratios = [f"1/{s}" if s > 1 else "1" for s in self.output_strides]
        return ratios[0] if len(ratios) == 1 else f"{', '.join(ratios[:-1])} or {ratios[-1]}"

    def default(self, option: str) -> Any:
        """The builder's default for config option ``option`` (``nReductions`` -> ``n_reductions``)."""
        return inspect.signature(self.builder).parameters[option_to_parameter(option)].default


class UnknownModelError(UnknownNameError):
    pass


def _ensure_models_imported() -> None:
    # Importing the model modules runs every @register_model decorator.
    import importlib

    from models import MODEL_MODULES

    for module in MODEL_MODULES:
        importlib.import_module(f"models.{module}")


MODEL_REGISTRY: Registry[ModelEntry] = Registry("model", UnknownModelError, load=_ensure_models_imported)


def register_model(
    name: str,
    *,
    target: str = "heatmap",
    output_strides: tuple[int, ...] | None = None,
    heatmap_halvings: str | None = None,
    trains_with_target: bool = False,
    stage_metrics: str | None = None,
    uses_training_poses: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder`` under ``name`` (looked up case-insensitively).

    ``output_strides``: the ``inputRes / outputRes`` ratios (as strides, 4 for 1/4) the model can
    produce. ``heatmap_halvings``: the config option counting how often it halves its
    heatmap-sized features (e.g. ``nReductions``). ``trains_with_target``, ``stage_metrics`` (a
    lower-case label) and ``uses_training_poses``: see the module docstring."""
    if target not in target_types():  # each has a codec (datasets/codecs.py's register_target_type)
        raise ValueError(f"target must be one of {tuple(target_types())}, got {target!r}")
    if stage_metrics is not None and not re.fullmatch(r"[a-z]+", stage_metrics):
        raise ValueError(f"stage_metrics must be a lower-case word, got {stage_metrics!r}")
    if output_strides is not None and (not output_strides or min(output_strides) < 1):
        raise ValueError(f"output_strides must be positive integers, got {output_strides!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not builder.__module__.startswith("models."):
            _ensure_models_imported()  # a model added from outside may not take a built-in's name
        strides = tuple(sorted(output_strides)) if output_strides is not None else None
        MODEL_REGISTRY.add(
            name,
            ModelEntry(
                name, builder, target, strides, heatmap_halvings,
                trains_with_target, stage_metrics, uses_training_poses,
            ),
        )  # fmt: skip
        return builder

    return decorate


def list_models() -> list[str]:
    return MODEL_REGISTRY.names()


def get_entry(name: str) -> ModelEntry:
    """Registry entry for ``name`` (case-insensitive)."""
    return MODEL_REGISTRY.get(name)


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
