"""How many channels a group keeps for a requested sparsity."""
from __future__ import annotations

import math


def kept_channels(channels: int, sparsity: float, round_to: int = 1) -> int:
    """Channels kept when removing ``sparsity`` of ``channels``, as a multiple of ``round_to``.

    Removes ``floor(channels * sparsity)`` channels, then rounds the kept count to the
    nearest multiple of ``round_to``; never fewer than one multiple (or one channel) and
    never more than ``channels``.
    """
    keep = channels - math.floor(channels * sparsity + 1e-9)
    if round_to > 1:
        keep = max(round_to, math.floor(keep / round_to + 0.5) * round_to)
    return max(1, min(channels, keep))


def kept_blocks(blocks: int, size: int, sparsity: float, round_to: int = 1) -> int:
    """Channels kept when removing ``sparsity`` of ``blocks`` whole blocks of ``size`` channels
    (a grouped conv's conv groups, ``conv_groups: whole``): whole blocks, their total a
    multiple of ``round_to`` where a whole number of blocks can make it one."""
    return kept_channels(blocks, sparsity, blocks_round_to(round_to, size)) * size


def blocks_round_to(round_to: int, size: int) -> int:
    """The multiple of blocks of ``size`` channels whose total is a multiple of ``round_to``."""
    return round_to // math.gcd(round_to, size)
