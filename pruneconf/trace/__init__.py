"""Phase one, step one: run the model and record its op graph."""
from .refs import Ref
from ..errors import TraceError
from .tracer import trace

__all__ = ["Ref", "TraceError", "trace"]
