"""One run on several processes (DDP under `torchrun`): who writes, how numbers agree, how the model syncs.

`torchrun --nproc_per_node=N -m thesis_lib.cli train ...` starts N copies of the same run. Each
trains on its own shard of every batch (the loaders shard by rank), gradients are averaged by
DistributedDataParallel, and only rank 0 writes the run directory: facts, checkpoints, telemetry,
logs and the report. Epoch metrics are summed across ranks before anyone reads them, so every
rank takes the same decisions (best epoch, early stopping, NaN, a user's Stop) at the same step;
a decision that one rank takes alone would leave the others waiting in a collective forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError

__all__ = ["DistributedContext", "DistributedModel", "NonWritingRunWriter", "SINGLE_PROCESS"]


class _LossForward(torch.nn.Module):
    """Routes DDP's forward to the model's loss_and_metrics, so DDP's gradient hooks see the step."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model.loss_and_metrics(batch)


class DistributedModel(DistributedDataParallel):
    """The training step's view of a DDP-wrapped model: `loss_and_metrics` goes through DDP's forward."""

    def loss_and_metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self(batch)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run: rank, world size, and whether it set up the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "DistributedContext":
        """Read torchrun's environment; join (or create) the process group when there are several ranks.

        Raises:
            ConfigError: torchrun's variables are inconsistent, or a CUDA run has fewer GPUs than local ranks.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return SINGLE_PROCESS
        try:
            rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"WORLD_SIZE={world_size} but RANK/LOCAL_RANK are missing or not integers ({exc}); "
                              "start several processes with torchrun") from exc
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                                  "visible; start at most one process per GPU (torchrun --nproc_per_node)")
            torch.cuda.set_device(local_rank)
        owns_group = not dist.is_initialized()
        if owns_group:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world_size, local_rank, local_world_size, owns_group)

    def device_for(self, device: torch.device) -> torch.device:
        """One GPU per local rank; CPU stays CPU."""
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the training step calls: DDP around the model with several ranks, else the model."""
        if not self.enabled:
            return model
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedModel(_LossForward(model), device_ids=device_ids)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (a no-op alone); gloo and NCCL both take float64 sums."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this run created it (a caller's own group is theirs to close)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


SINGLE_PROCESS = DistributedContext()


class NonWritingRunWriter:
    """RunWriter's interface on ranks other than 0: the run's facts are rank 0's to write, once."""

    def __enter__(self) -> "NonWritingRunWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def write_config(self, config: Any) -> None:
        return None

    def write_env(self, env: Any) -> None:
        return None

    def event(self, moment: str, /, **payload: Any) -> None:
        return None

    def scalars(self, row: Any) -> None:
        return None

    def steps(self, rows: Any) -> None:
        return None

    def flush(self) -> None:
        return None
