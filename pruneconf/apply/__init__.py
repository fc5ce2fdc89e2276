"""Phase two, last step: shrink the layers so the model computes what the masked one did."""
from .resize import register_resizer
from .shrink import Shrunk, shrink, unsupported_groups

__all__ = ["Shrunk", "register_resizer", "shrink", "unsupported_groups"]
