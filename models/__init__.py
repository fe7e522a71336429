"""Pose models, registered with ``models.registry`` by their modules (``MODEL_MODULES``).

Importing this package imports neither torch nor the models: the registry imports every model
module the first time it is asked for one (``list_models``, ``get_entry``, ``build_model``), so a
tool inside the package (``python -m models.import_weights --help``) answers at once.
"""

from __future__ import annotations

from typing import Any

MODEL_MODULES = (
    "chained_predictions",
    "deeppose",
    "dlcm",
    "hrnet",
    "ief",
    "pose_attention",
    "pyranet",
    "rtmpose",
    "simple_baseline",
    "stacked_hourglass",
    "vitpose",
)

__all__ = ["build_model", "get_entry", "list_models", "register_model", "target_type_of"]


def __getattr__(name: str) -> Any:
    # the registry's functions, imported (with torch) when first used: from models import build_model
    if name in __all__:
        from models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
