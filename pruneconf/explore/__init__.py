"""Planning sparsity: ``--set`` overrides, MAC budgets, sweeps, sensitivity and honest reports.

Everything here works on a traced model's channel groups and a recipe; the CLI only parses
arguments and calls these functions.
"""
