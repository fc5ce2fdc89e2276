"""Phase one, step two: which channels must be pruned together."""
from .find import ChannelGroups, Group, Member, find_groups
from .registry import register, registered_ops

__all__ = ["ChannelGroups", "Group", "Member", "find_groups", "register",
           "registered_ops"]
