"""Phase two, last step: shrink the layers so the model computes what the masked one did."""
from .resize import register_resizer
from .shrink import Shrunk, shrink, unresizable_norm, unsupported_layer

__all__ = ["Shrunk", "register_resizer", "shrink", "unresizable_norm", "unsupported_layer"]
