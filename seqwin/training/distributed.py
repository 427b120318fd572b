"""Where training runs: the device, fairseq2 gangs under ``torchrun``, and how the trained modules are spread over
the ranks.

The trainer's model is replicated with fairseq2's DDP or, with ``data_parallel: fsdp``, sharded with fairseq2's
FSDP2 (parameters, gradients and optimizer state; checkpoints hold the full state, gathered to CPU). Extra
modules a step function trains itself (a GAN's discriminator) are small: they are replicated with torch's DDP in
either mode.
"""

from __future__ import annotations

import atexit
import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def create_gangs(device: torch.device):
    """fairseq2 gangs: real ones under torchrun (gloo on CPU, NCCL on GPU), fake single-process ones otherwise."""
    from fairseq2.gang import ProcessGroupGang, create_fake_gangs, create_parallel_gangs

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return create_fake_gangs(device)
    import torch.distributed as dist

    if dist.is_initialized():  # a second Trainer in the same process reuses the group
        return create_parallel_gangs(ProcessGroupGang(dist.group.WORLD, device))
    gangs = create_parallel_gangs(ProcessGroupGang.create_default_process_group(device))
    # Destroy the group while the interpreter is still alive: left to static destructors at exit, gloo's worker
    # threads were sometimes torn down still joinable ("terminate called without an active exception", rank
    # killed with SIGABRT after training had finished; seen once in tests/test_distributed_recipes.py).
    atexit.register(_destroy_process_group)
    return gangs


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def replicate(model: nn.Module, gangs) -> nn.Module:
    """fairseq2's DDP wrapper: gradients averaged over ranks in the backward. Unused parameters are allowed
    (a routing layer's centroids, a frozen encoder)."""
    from fairseq2.nn.ddp import to_ddp

    return to_ddp(model, gangs, find_unused_parameters=True)


def replicate_extra(module: nn.Module) -> nn.Module:
    """torch's DDP over the default process group, for a module the step function updates with its own
    optimizer."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)


def shard(model: nn.Module, gangs) -> tuple[nn.Module, Any]:
    """fairseq2's FSDP2 over all ranks: ``(wrapped model, the FSDP gangs)``. Each element of a ``ModuleList``
    (transformer layers, conv blocks) is one FSDP unit, gathered just for its own forward and backward; the root
    unit holds the rest. Only list elements: a module whose weight another uses outside its forward (a tied
    embedding) must stay in the root."""
    from fairseq2.gang import create_fsdp_gangs
    from fairseq2.nn.fsdp import to_fsdp

    gangs = create_fsdp_gangs(gangs)

    def applier(module: nn.Module, wrap) -> nn.Module:
        layers = [layer for sub in module.modules() if isinstance(sub, nn.ModuleList) for layer in sub
                  if any(p.requires_grad for p in layer.parameters())]
        for layer in reversed(layers):  # innermost first: FSDP2 shards a module's own, not-yet-sharded params
            wrap(layer)
        return wrap(module, reshard_after_forward=False)

    return to_fsdp(model, gangs, applier, version="v2"), gangs


def unshard(model: nn.Module, template: nn.Module | None, device: torch.device) -> nn.Module | None:
    """After FSDP training: gather the full weights (every rank takes part) into ``template`` (an empty copy of
    the model, see :func:`meta_copy`; only rank 0 has one) and return it as a plain module; ``None`` elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if template is None:
        return None
    plain = template.to_empty(device=device)
    plain.load_state_dict(full)
    for name, buf in model.named_buffers():  # FSDP does not shard buffers; non-persistent ones too
        if name not in full:
            plain.get_buffer(name).copy_(buf)
    return plain


def gather_full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The full model and optimizer state of a sharded model, gathered to CPU (a collective), keyed as a
    single-process model's would be."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Every rank read the full state: each keeps its own shard of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


@contextmanager
def fsdp2_no_sync(module: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally. fairseq2 0.8.1's ``fsdp2_no_sync`` calls ``set_requires_grad_sync``, which
    torch 2.9 names ``set_requires_gradient_sync``."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose tensors live on the meta device: the structure without a byte of the data.
    Tensor attributes that are not leaves (e.g. ``torch.nn.utils.weight_norm``'s computed weight, which
    ``deepcopy`` refuses) get a meta placeholder too; their forward hooks recompute them."""
    memo: dict[int, Any] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
    for buf in model.buffers():
        memo[id(buf)] = torch.empty_like(buf, device="meta")
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and id(value) not in memo and not value.is_leaf:
                memo[id(value)] = torch.empty_like(value.detach(), device="meta")
    return copy.deepcopy(model, memo)
