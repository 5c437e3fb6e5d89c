"""Data-parallel runs under torchrun: the one place for the process group, ranks, sharding, broadcasts and sums.

`torchrun --nproc_per_node N -m quantize qat ...` (or `-m edge_crossformer.train`, `-m benchmarks accuracy`) starts
N copies of the command with RANK / WORLD_SIZE / MASTER_ADDR in their environment; `session()` joins them into one
process group (NCCL on CUDA, gloo on CPU). Without torchrun (or with one process) there is no group and every
helper here is the identity of a one-process world, so the commands compute exactly what they compute on their own.

What the helpers keep true: every rank holds the same weights, quantizers and random-generator state (they start
from rank 0's and gradients are averaged), each image of an epoch or a test set is seen by exactly one rank, and
only rank 0 prints and writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from datetime import timedelta

import torch
from torch import Tensor, nn

# How long a collective waits for a rank that stopped answering before it fails (torch's default is 30 min, which
# would leave a dead run hanging that long); rank 0 evaluating alone never takes this long.
TIMEOUT = timedelta(minutes=10)


class DistributedError(RuntimeError):
    """A data-parallel run that cannot go on (ranks disagree, a rank died, settings that do not split); the
    message says what to do."""


class LostContact(DistributedError):
    """This rank's collective failed: another process of the job died or hung (the one error that can be a single
    rank's own, so every rank reports it)."""


def launched() -> bool:
    """Started by torchrun with more than one process (torchrun with one process runs like the plain command)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if _active() else 1


def rank() -> int:
    return torch.distributed.get_rank() if _active() else 0


def is_main() -> bool:
    """Rank 0: the one process that prints and writes files."""
    return rank() == 0


def secondary() -> bool:
    """A torchrun process other than rank 0, also after its group is gone: it leaves messages rank 0 also prints
    (the same user error, the same interrupt) to rank 0."""
    return launched() and int(os.environ.get("RANK", "0")) != 0


def backend() -> str:
    """NCCL when the processes have GPUs, gloo (CPU tensors) otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def device() -> torch.device:
    """This rank's GPU under NCCL; the CPU otherwise (a plain one-process run stays on the CPU, as it always has)."""
    if _active() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def describe() -> dict:
    """What a record says about the run's processes (empty for one process, so one-process records are unchanged)."""
    return {"world_size": world_size(), "backend": torch.distributed.get_backend()} if _active() else {}


@contextlib.contextmanager
def session():
    """Join torchrun's process group for the body, if launched by torchrun; leave it on every way out.

    Ranks other than 0 print nothing to stdout: they compute the same numbers, and N copies of every line and
    progress bar would bury rank 0's. Their stderr stays, so an error that is theirs alone still shows.
    """
    if not launched():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend(), timeout=TIMEOUT)
    stdout = sys.stdout
    try:
        if not is_main():
            sys.stdout = open(os.devnull, "w")
        yield
    except torch.distributed.DistError as e:
        raise LostContact(f"rank {rank()} lost contact with the other processes of this torchrun job "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); torchrun's "
                               "report names the rank that failed. Nothing half-written was left: rerun the same "
                               "command to resume from the last completed epoch") from None
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        with contextlib.suppress(Exception):  # a dead peer must not turn the way out into a second error
            torch.distributed.destroy_process_group()


def _has_unused_parameters(model: nn.Module, example: Tensor) -> bool:
    """Whether some trainable parameter takes no part in the forward (one evaluation-mode pass over `example`:
    evaluation mode moves no range observer)."""
    params = [p for p in model.parameters() if p.requires_grad]
    mode = model.training
    model.eval()
    with torch.enable_grad():
        grads = torch.autograd.grad(model(example).sum(), params, allow_unused=True)
    model.train(mode)
    return any(g is None for g in grads)


def wrap(model: nn.Module, example: Tensor) -> nn.Module:
    """`model` in DistributedDataParallel (gradients averaged over the ranks in backward), or itself alone.

    Buffers are not re-broadcast from rank 0 at every forward: the ones that change in training (learned
    quantizer ranges) are averaged over the ranks by their owner instead, so no rank's batches are ignored.
    DDP searches the graph for unused parameters at every step only when some exist (`example`, an input, shows
    it): the deployable model of the NNCF scheme keeps weights its forward never uses (the position-bias MLP,
    folded to constants).
    """
    if world_size() == 1:
        return model
    ids = [device().index] if device().type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False,
                                               find_unused_parameters=_has_unused_parameters(model, example))


def no_sync(model: nn.Module, last: bool):
    """Gradient accumulation: all-reduce only on the last micro-batch of a step (DDP's `no_sync` before it)."""
    if last or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def check_batch(batch_size: int, grad_accum: int) -> None:
    """A global batch splits into world size x grad-accum equal micro-batches, or the run stops before it starts."""
    parts = world_size() * grad_accum
    if batch_size % parts:
        lower, upper = batch_size // parts * parts, (batch_size // parts + 1) * parts
        raise DistributedError(
            f"--batch-size {batch_size} (the global batch of one optimizer step) does not split into "
            f"{world_size()} process(es) x --grad-accum {grad_accum} = {parts} equal micro-batches; pass a multiple "
            f"of {parts}{f' (e.g. {lower} or {upper})' if lower else f' (e.g. {upper})'} or change --grad-accum / "
            "--nproc_per_node")


def micro_batches(size: int, grad_accum: int) -> list[slice] | None:
    """This rank's micro-batches (slices of a global batch of `size`): the batch is cut into world x grad-accum
    contiguous pieces, rank r taking pieces r*k .. r*k+k-1. An epoch's last, short batch is cut as evenly as it
    goes; None when it has fewer images than pieces (every rank then skips that step, as DistributedSampler's
    drop_last would; a one-process run without --grad-accum never skips)."""
    parts = world_size() * grad_accum
    if size < parts:
        return None
    bounds = [size * i // parts for i in range(parts + 1)]
    first = rank() * grad_accum
    return [slice(bounds[i], bounds[i + 1]) for i in range(first, first + grad_accum)]


def shard(n: int) -> slice:
    """This rank's contiguous share of `n` items for evaluation: every item scored exactly once, none padded."""
    return slice(n * rank() // world_size(), n * (rank() + 1) // world_size())


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (float64: counts stay exact up to 2^53)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def average_(tensors: list[Tensor]) -> None:
    """Replace each tensor (in place) by its mean over the ranks."""
    if world_size() == 1:
        return
    for t in tensors:
        torch.distributed.all_reduce(t)
        t.div_(world_size())


def gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def digest(tensors: dict[str, Tensor], structure_only: bool = False) -> str:
    """sha256 over names, dtypes, shapes and (unless `structure_only`) the values of a state dict, in name order
    (so a dict read back from a file gives its writer's digest)."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if not structure_only:
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_identical(value: str, what: str, fix: str) -> list[str]:
    """Every rank's `value` (a digest), in rank order; DistributedError naming the ranks that differ from rank 0."""
    values = gather(value)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        raise DistributedError(f"{what} differ between ranks: rank 0 has {values[0][:12]}, rank(s) {odd} have "
                               f"{sorted({values[r][:12] for r in odd})}; {fix}")
    return values


def broadcast_state(module: nn.Module) -> None:
    """Overwrite every parameter and buffer of `module` with rank 0's (in place)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in module.state_dict(keep_vars=True).values():
            t = t.data if isinstance(t, nn.Parameter) else t
            if t.dtype == torch.bool:  # gloo has no bool: travel as bytes
                carrier = t.to(torch.uint8)
                torch.distributed.broadcast(carrier, 0)
                t.copy_(carrier.bool())
            else:
                torch.distributed.broadcast(t, 0)


def share_start(module: nn.Module, what: str, extra: str = "") -> dict:
    """Make every rank start from rank 0's `module` (weights and quantizers) and prove it.

    Each rank built its own copy the same way; first the structures (names, shapes, `extra`: e.g. which
    quantizers are frozen) must agree, or a broadcast would pair wrong tensors (NNCF issue #431: quantizer setups
    can differ between ranks); then rank 0's values are broadcast and every rank's digest must equal rank 0's.
    Returns each rank's digest before and after, for the run's record.
    """
    state = module.state_dict()
    check_identical(digest(state, structure_only=True) + extra, f"{what} structures",
                    "every rank must build the same model from the same checkpoint, calibration images and options")
    computed = gather(digest(state))
    broadcast_state(module)
    start = check_identical(digest(module.state_dict()), f"{what} after the broadcast from rank 0",
                            "this is a bug in the broadcast; please report it")
    if len(set(computed)) > 1 and is_main():
        print(f"note: ranks computed different {what} (differing ranks: "
              f"{[r for r, c in enumerate(computed) if c != computed[0]]}); all now use rank 0's")
    return {"computed_sha256": computed, "start_sha256": start}


def run(main):
    """`main()` inside `session()`: what a command line runs, so that torchrun's processes form one group."""
    with session():
        return main()
