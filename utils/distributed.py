"""torchrun detection and collective helpers that are no-ops in a single process.

The caller never branches on "am I distributed": ``get_rank()`` is 0, ``barrier()`` does nothing
and ``all_reduce_sum`` returns its input when the suite runs as one plain process.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_MIN = 30


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's local GPU) when available, else CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA device is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def timeout_minutes() -> float:
    """Collective timeout: ``BRATS_DIST_TIMEOUT_MIN`` (minutes), else ``NCCL_TIMEOUT`` (seconds), else 30 min."""
    if os.environ.get("BRATS_DIST_TIMEOUT_MIN"):
        return float(os.environ["BRATS_DIST_TIMEOUT_MIN"])
    if os.environ.get("NCCL_TIMEOUT"):
        return float(os.environ["NCCL_TIMEOUT"]) / 60.0
    return DEFAULT_TIMEOUT_MIN


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Initialise the process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    if not under_torchrun():
        return DistContext(0, 0, 1, resolve_device(device_preference), None)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = resolve_device(device_preference, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": _dt.timedelta(minutes=timeout_minutes())}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return DistContext(rank, local, world, device, backend)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _active() else 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object per rank, in rank order (``[obj]`` in one process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank ``src``'s, in place.

    DDP keeps parameters equal, but buffers (BatchNorm running statistics) are updated by each
    rank's own forward passes after DDP's buffer broadcast; evaluating on every rank with rank
    ``src``'s state makes the figures those of the checkpoint rank ``src`` writes."""
    if not _active():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=src)


def any_rank_true(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on at least one rank."""
    if not _active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return bool(t.item() > 0)


def job_store(timeout_s: float = 30.0) -> Any:
    """A client of the job's key-value store, of its own (one TCP connection; thread-safe): torchrun's
    rendezvous store at ``MASTER_ADDR:MASTER_PORT`` (also across nodes), else the process group's store."""
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=_dt.timedelta(seconds=timeout_s))
    return dist.distributed_c10d._get_default_store()


def collective_seq() -> int:
    """How many collectives this rank has entered in the default process group (the backend's sequence
    number, gloo and NCCL): equal on every rank wherever no collective is pending. 0 in one process."""
    if not _active():
        return 0
    return int(dist.group.WORLD._get_sequence_number_for_group())


def cleanup() -> None:
    if _active():
        dist.destroy_process_group()
