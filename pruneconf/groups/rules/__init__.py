"""Channel rules, one module per family of operators. Importing registers them."""
from . import (attention, conv, elementwise, indexing, linear, norm, recurrent, reduction, shape,
               spatial)

__all__ = ["attention", "conv", "elementwise", "indexing", "linear", "norm", "recurrent",
           "reduction", "shape", "spatial"]
