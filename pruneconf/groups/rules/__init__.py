"""Channel rules, one module per family of operators. Importing registers them."""
from . import (attention, conv, detection, einsum, elementwise, indexing, linear, norm, read_sizes, recurrent,
               reduction, shape, spatial, weights)

__all__ = ["attention", "conv", "detection", "einsum", "elementwise", "indexing", "linear", "norm", "read_sizes",
           "recurrent", "reduction", "shape", "spatial", "weights"]
