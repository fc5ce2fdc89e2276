"""Channel rules, one module per family of operators. Importing registers them."""
from . import (attention, conv, detection, einsum, elementwise, indexing, linear, low_rank, norm,
               parametrized, read_sizes, recurrent, reduction, shape, shuffle, spatial, views,
               weights)

__all__ = ["attention", "conv", "detection", "einsum", "elementwise", "indexing", "linear", "low_rank",
           "norm", "parametrized", "read_sizes", "recurrent", "reduction", "shape", "shuffle", "spatial",
           "views", "weights"]
