"""pruneconf: structured channel pruning of PyTorch models, driven by an editable YAML recipe."""
from ._version import __version__
from .errors import ConfigError, PruneconfError, TraceError
from .groups import ChannelGroups, Group, find_groups
from .trace import trace

__all__ = ["ChannelGroups", "ConfigError", "Group", "PruneconfError", "TraceError", "__version__",
           "find_groups", "trace"]
