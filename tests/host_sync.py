"""A CPU-side detector of host round trips: ops that, on a GPU, make the host wait for a device value.

``.item()``, ``bool(t)``, ``int(t)`` and ``float(t)`` all reach ``aten._local_scalar_dense``; ``torch.equal``
answers on the host; ``nonzero``, ``masked_select``, ``unique``, ``bincount`` and boolean-mask indexing size their
output by the data; ``repeat_interleave`` with tensor repeats and no ``output_size`` does too. On the CPU these cost
nothing, so a test cannot time them; it can watch the dispatcher for them, which is what :class:`HostSyncGuard`
does, on any device. What it cannot see on CPU tensors: copies to the host (``.cpu()``, ``.tolist()``,
``.numpy()`` are no-ops there), which only the GPU test under ``torch.cuda.set_sync_debug_mode`` catches.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_SYNCING = {
    aten._local_scalar_dense, aten.equal, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
    aten.unique_consecutive, aten.argwhere, aten.bincount,
}


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class HostSyncGuard(TorchDispatchMode):
    """``with HostSyncGuard(): ...`` raises ``AssertionError`` naming the first op that needs a device value on
    the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        syncs = packet in _SYNCING
        if packet in (aten.index, aten.index_put, aten.index_put_):
            syncs = _bool_index(args[1])
        if packet is aten.repeat_interleave and isinstance(args[0], torch.Tensor) and len(args) == 1:
            syncs = kwargs.get("output_size") is None  # repeats given as a tensor: the length is data
        if syncs:
            raise AssertionError(f"host round trip: {func}")
        return func(*args, **kwargs)
