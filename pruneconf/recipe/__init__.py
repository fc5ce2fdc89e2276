"""Phase one, step three: the editable YAML recipe."""
from .generate import build_recipe, group_summary, write_recipe
from .yamlio import load_document, write_atomic

__all__ = ["build_recipe", "group_summary", "load_document", "write_atomic", "write_recipe"]
