"""Costs of a traced graph: multiply-accumulates and parameters, per node and per group."""
from .costs import GroupCost, group_costs, node_macs, total_macs, total_params, tutorial_flops

__all__ = ["GroupCost", "group_costs", "node_macs", "total_macs", "total_params", "tutorial_flops"]
