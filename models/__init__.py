"""Pose models. Importing this package registers every model with ``models.registry``."""

from models import chained_predictions, deeppose, pose_attention, pyranet, stacked_hourglass  # noqa: F401
from models.registry import build_model, get_entry, list_models, register_model, target_type_of

__all__ = ["build_model", "get_entry", "list_models", "register_model", "target_type_of"]
