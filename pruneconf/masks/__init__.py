"""Phase two: rank channels and hold the pruned ones at zero for finetuning."""
from .importance import METRICS, metric
from .plan import PruningPlan, make_plan
from .register import Masks, register_masks

__all__ = ["METRICS", "Masks", "PruningPlan", "make_plan", "metric", "register_masks"]
