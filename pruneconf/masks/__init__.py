"""Phase two: rank channels and hold the pruned ones at zero for finetuning."""
from .calibration import Calibration, calibrate
from .importance import DATA_METRICS, METRICS, metric
from .plan import PruningPlan, calibration_for, make_plan
from .register import Masks, register_masks

__all__ = ["DATA_METRICS", "METRICS", "Calibration", "Masks", "PruningPlan", "calibrate", "calibration_for",
           "make_plan", "metric", "register_masks"]
