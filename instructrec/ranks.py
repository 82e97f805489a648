"""A process's place in a data-parallel group, and the few collectives training needs.

torch.distributed is initialised by the launcher (instructrec.engine.distributed: Ray Train); a process
alone is Ranks() and calls no collective at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel group (torch.distributed initialised by the launcher).

    A step's batch is split across the ranks; each rank divides its loss by the whole step's
    weight (over the world size, as DDP averages gradients), so the averaged gradient is the
    gradient of the step's mean loss: 2 ranks of 64 windows train as 1 process on 128.
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def lead(self) -> bool:
        """Rank 0: the one that validates, checkpoints and reports."""
        return self.rank == 0

    def divisor(self, local: torch.Tensor) -> torch.Tensor:
        """What this rank divides its summed loss by: the step's total of `local` over the world size."""
        if self.world == 1:
            return local
        import torch.distributed as dist

        total = local.detach().float().clone()
        dist.all_reduce(total)
        return total / self.world

    def mean(self, value: float) -> float:
        """The ranks' mean of a scalar (the step's loss, from each rank's part)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world

    def from_lead(self, value: float) -> float:
        """Rank 0's value on every rank (its validation score decides early stopping for all)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, 0)
        return float(t)
