"""Data parallelism for the experiments: ``torch.distributed`` under ``torchrun`` (gloo on CPU, nccl on GPU).

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) everything here is a single-process no-op.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .. import __version__
from .records import shown


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks.

    Attributes:
        rank: global rank (0 writes files).
        size: number of ranks.
        local_rank: rank on this machine (picks the GPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, t: Tensor) -> Tensor:
        """All-reduce sum across ranks (the tensor itself when single-process)."""
        if self.distributed:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def agree(self, **settings: Any) -> None:
        """Refuse, on every rank at once, a run whose processes were given different ``settings`` (JSON-like
        values: the configuration's fingerprint, the names, the seeds). torchrun starts every process with the
        same command, but a launch by hand or over several machines (each node types its own, each reads its
        own data) need not: ranks that train different steps hang in a collective, and ranks that read
        different data or seeds averaged their gradients into one model saved under rank 0's settings.

        Raises:
            ValueError: on every rank, naming the first setting that differs and the ranks' values.
        """
        if not self.distributed:
            return
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, settings)
        for rank, theirs in enumerate(gathered[1:], start=1):
            where = first_difference(gathered[0], theirs)
            if where is not None:
                path, mine, other = where
                # every rank found the same difference: all leave together, none tearing the group down while a
                # peer still reads from it (gloo then aborted that peer at exit, intermittently: review s7)
                dist.barrier()
                raise ValueError(
                    f"the {self.size} processes of this torchrun run were not started alike: {path} is "
                    f"{shown(mine, 80)} on rank 0 but {shown(other, 80)} on rank {rank}; start every process with the "
                    "same arguments and the same data"
                )


def first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place where two JSON-like values differ: ``(dotted path, a's value, b's value)``, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            where = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if where is not None:
                return where
        return None
    return None if a == b else (path or "the value", a, b)


#: The single-process world (the default everywhere).
SINGLE = World()


def env_int(name: str, default: int | None = None, *, at_least: int = 0) -> int:
    """An integer torchrun puts in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``); ``default`` when unset (None: it must be set, as ``RANK`` must with ``WORLD_SIZE``).

    Raises:
        ValueError: naming the variable, when it is missing, not an integer or below ``at_least``.
    """
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(
                f"{name} is not set in the environment but WORLD_SIZE={os.environ.get('WORLD_SIZE')} is: start the "
                "processes with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) or "
                "unset WORLD_SIZE"
            )
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} in the environment is not an integer (torchrun sets it)") from None
    if value < at_least:
        raise ValueError(f"{name}={value} in the environment must be at least {at_least} (torchrun sets it)")
    return value


def local_world_size() -> int:
    """Processes per machine as torchrun reports it (1 without torchrun)."""
    return env_int("LOCAL_WORLD_SIZE", 1, at_least=1)


def world_size() -> int:
    """Processes torchrun started (``WORLD_SIZE``; 1 without torchrun), known before the process group exists."""
    return env_int("WORLD_SIZE", 1, at_least=1)


def env_rank() -> int:
    """This process's rank (``RANK``; 0 without torchrun), known before the process group exists."""
    return env_int("RANK", 0) if world_size() > 1 else 0


def check_batch_split(batch_size: int, what: str = "batch_size", *, settable: bool = True) -> None:
    """Refuse, before any work, a global batch that torchrun's processes cannot share evenly (each takes
    ``batch_size / WORLD_SIZE`` rows of every step; ``what`` names it, e.g. ``--batch-size``; ``settable``: the
    user can choose another, else only the number of processes is suggested).

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``WORLD_SIZE``.
    """
    size = world_size()
    if size <= 1 or batch_size % size == 0:
        return
    lower = batch_size - batch_size % size
    multiples = f"{lower} or {lower + size}" if lower else str(lower + size)
    fix = f"give a multiple of {size} (e.g. {multiples}) or " if settable else ""
    raise ValueError(
        f"{what} {batch_size} cannot be shared by the {size} processes torchrun started (each takes an equal part "
        f"of every step's batch); {fix}run a number of processes that divides {batch_size}"
    )


def setup_world(device: torch.device) -> World:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), if any.

    The backend is nccl on CUDA and gloo otherwise. Calling it again reuses the existing group.

    Raises:
        ValueError: ``WORLD_SIZE`` > 1 on CUDA with fewer visible GPUs than local ranks.
    """
    size = world_size()
    if size <= 1:
        return World()
    rank, local_rank = env_int("RANK"), env_int("LOCAL_RANK", 0)
    if rank >= size:
        raise ValueError(
            f"RANK={rank} in the environment must be below WORLD_SIZE={size} (torchrun sets both)"
        )
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); run fewer processes "
                "per node or use --device cpu"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local_rank)


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device this rank computes on: ``cuda:<local_rank>`` for CUDA, ``device`` otherwise."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; anything else must name an available device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device name (try cpu, cuda, cuda:1 or auto)") from err
    if dev.type == "meta":
        raise ValueError("--device meta holds no data, so nothing can run on it; use cpu, cuda or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for CUDA but torch sees no GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):  # mps, xpu, ...: torch.<type>.is_available() where torch has one
        available = getattr(getattr(torch, dev.type, None), "is_available", None)
        if not (callable(available) and available()):
            raise ValueError(
                f"--device {device}: this torch has no {dev.type} device here; use cpu, cuda or auto"
            )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(
            f"--device {device}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}; use one of those or cuda"
        )
    return dev


def versions(device: torch.device, world: World) -> dict[str, Any]:
    """Software and hardware the numbers came from."""
    info: dict[str, Any] = {
        "posenc": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "world_size": world.size,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
