"""Pose models. Importing this package registers every model with ``models.registry``."""

from models import (  # noqa: F401
    chained_predictions,
    deeppose,
    hrnet,
    pose_attention,
    pyranet,
    simple_baseline,
    stacked_hourglass,
)
from models.registry import build_model, get_entry, list_models, register_model, target_type_of

__all__ = ["build_model", "get_entry", "list_models", "register_model", "target_type_of"]
