"""pruneconf: structured channel pruning of PyTorch models, driven by an editable YAML recipe."""
from ._version import __version__
from .errors import ConfigError, PruneconfError, TraceError
from .groups import ChannelGroups, Group, find_groups
from .pruner import OneShotChannelPruner, Pruner, VerificationError
from .recipe.load import Recipe, load_recipe
from .reproduce import load_pruned
from .trace import trace

__all__ = ["ChannelGroups", "ConfigError", "Group", "OneShotChannelPruner", "PruneconfError", "Pruner",
           "Recipe", "TraceError", "VerificationError", "__version__", "find_groups", "load_pruned",
           "load_recipe", "trace"]
