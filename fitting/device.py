"""Where the fitters' tensors live: a device spec ('cpu', 'cuda', 'cuda:N') → a torch.device.

`cuda` inside a Dask worker picks the worker's own GPU: cuda:(i mod the visible GPU count), i the
worker's index in its cluster (`local:N` and LocalCluster name workers 0..N-1; another name counts
by its trailing number). dask-cuda instead gives every worker a CUDA_VISIBLE_DEVICES list that
starts with its own GPU: there pass `cuda:0`. Results do not depend on the device beyond float
rounding, so the device is never part of a config digest.
"""

from __future__ import annotations

import copy
import re
import zlib

import torch
from torch import Tensor, nn

DEVICE_HELP = "cpu (default), cuda (a Dask worker's own GPU) or cuda:N"


def check_device_spec(spec: str | torch.device | None) -> str:
    """The spec normalised ('cpu', 'cuda', 'cuda:N'; None = 'cpu'), checked for form only (a flow
    checks it before its workers, which may have the GPUs it lacks, resolve it)."""
    spec = (str(spec) if spec is not None else "cpu").strip().lower()
    if spec != "cpu" and re.fullmatch(r"cuda(:\d+)?", spec) is None:
        raise ValueError(f"device={spec!r} (--device): choose {DEVICE_HELP}")
    return spec


def check_flow_device(spec: str | None, dask_address: str | None) -> str:
    """A flow's `device` parameter normalised; resolved (so a missing GPU fails here) unless Dask workers resolve it themselves."""
    spec = check_device_spec(spec)
    if not dask_address:
        resolve_device(spec)
    return spec


def resolve_device(spec: str | torch.device | None = "cpu") -> torch.device:
    """Device spec (None = cpu) → torch.device; ValueError naming the `device` option when it is unknown or CUDA is missing."""
    spec = check_device_spec(spec)
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} (--device): CUDA is not available on this machine ({_no_cuda_reason()}); pass --device cpu (flow: device='cpu')")
    count = torch.cuda.device_count()
    if match.group(1) is not None:
        index = int(match.group(1))
        if index >= count:
            raise ValueError(f"device={spec!r} (--device): this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        return torch.device("cuda", index)
    worker = _dask_worker_index()
    return torch.device("cuda", torch.cuda.current_device() if worker is None else worker % count)


def module_on(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` itself when its buffers and parameters are all on `device`, else a copy moved there (the caller's stays put)."""
    tensors = [*module.buffers(), *module.parameters()]
    if all(t.device == device for t in tensors):
        return module
    return copy.deepcopy(module).to(device)


def tensor_on(value, device: torch.device, dtype: torch.dtype | None = torch.float32) -> Tensor | None:
    """Any array-like (None passes through) as a tensor on `device` (dtype None = keep the tensor's own)."""
    if value is None:
        return None
    return torch.as_tensor(value, dtype=dtype).to(device)


def _dask_worker_index() -> int | None:
    """This Dask worker's index in its cluster, or None outside a worker."""
    try:
        from distributed import get_worker  # optional Dask extra (may be absent; ~0.41 s to import, -X importtime): only bare 'cuda' asks
    except ImportError:
        return None
    try:
        name = get_worker().name
    except ValueError:  # not inside a worker
        return None
    if isinstance(name, int):
        return name
    digits = re.search(r"(\d+)$", str(name))
    # No number in the name: a stable hash, so every run maps the worker to the same GPU.
    return int(digits.group(1)) if digits else zlib.crc32(str(name).encode())


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    return "no CUDA device visible"
