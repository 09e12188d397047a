"""Data-parallel training on ``torch.distributed``, launched by ``torchrun``.

``torchrun`` starts one process per device and tells each its place through the environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``); :func:`distributed_session` joins them into a process group (nccl on
CUDA, gloo on CPU). Without those variables nothing here touches ``torch.distributed``: a plain
``urbansound train`` is the single-process run it always was.

The pieces that make N processes train exactly like one:

* :class:`GlobalBatchSampler` draws the same (seed, epoch) permutation as the single-process loader, cuts it
  into the same global batches of ``batch_size`` clips, and gives each rank a contiguous slice of every
  global batch (``batch_size / world_size`` clips), so DDP's gradient average is the global batch's.
* BatchNorm layers are synchronised (:func:`convert_batchnorm`), so they normalise over the global batch.
* Epoch metrics are summed over ranks (:func:`reduce_epoch_stats`); validation is split over ranks and
  gathered (:func:`evaluate_sharded`), so every rank holds the same history and takes the same decisions
  (best epoch, early stopping) without further messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import RandomSampler, Sampler

from urbansound.errors import ConfigError
from urbansound.training.loop import (
    EpochStats,
    FeatureDataset,
    Predictions,
    epoch_generator,
    evaluate,
    make_loader,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its global rank, its rank on the node, the number of processes, and the
    device it trains on. The default is a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process launch (torchrun sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def distributed_session(device: torch.device) -> Iterator[DistributedContext]:
    """Join the process group described by torchrun's environment, and leave it on exit.

    ``device`` is the resolved ``--device``; on CUDA each process takes ``cuda:LOCAL_RANK``. Without
    torchrun's variables this yields a single-process context and initialises nothing.
    """
    if not launched_by_torchrun():
        yield DistributedContext(device=device)
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        # Before init_process_group, so nccl binds this process to its own GPU and not to GPU 0.
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"multi-process training runs on CUDA (nccl) or CPU (gloo), not {device.type}")
    dist.init_process_group(backend=backend)
    if rank == 0:
        logger.info("distributed: %d processes, backend %s, device %s", world_size, backend, device.type)
    try:
        yield DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)
        # Leave together: the other ranks finish before rank 0 has tested and written the results, and a rank
        # that tears gloo down while its peer is still connected can abort ("terminate called without an
        # active exception"; seen in about 1 of 5 two-process test runs). Not on an error: a barrier that
        # the failed rank never reaches would hang the others.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 of the process group, or of torchrun's environment before/after the group exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (unchanged in a single process). With nccl the
    tensor must live on this rank's GPU."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_in_turns(context: DistributedContext, work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 first, then on the first rank of every other node, then on the rest.

    Used for the feature cache: rank 0 computes it; on a shared cache path the later turns find every entry
    and the pack in place and only open the memory map; on node-local disks each node computes its own copy
    once. Entries are written atomically, so overlapping writers could not corrupt the cache anyway.
    """
    if not context.distributed:
        return work()
    result: T | None = None
    done = False
    for turn in (context.rank == 0, context.local_rank == 0, True):
        if turn and not done:
            result, done = work(), True
        barrier()
    return result  # type: ignore[return-value]


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's slices of the single-process run's batches.

    The (seed, epoch) permutation is drawn exactly as :func:`~urbansound.training.loop.make_loader` draws
    it and cut into global batches of ``batch_size``; rank ``r`` gets the ``r``-th contiguous slice of
    each. A last global batch smaller than ``world_size`` (it would leave a rank without clips) is dropped,
    so at most ``world_size - 1`` clips sit out an epoch, a different set each epoch.
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        rank: int,
        world_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        if batch_size % world_size:
            raise ConfigError(
                f"--batch-size is the global batch and must split evenly over {world_size} processes, "
                f"got {batch_size}"
            )
        self.n_items, self.batch_size = n_items, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch

    def global_batches(self) -> list[list[int]]:
        if self.shuffle:
            order = list(RandomSampler(range(self.n_items), generator=epoch_generator(self.seed, self.epoch)))
        else:
            order = list(range(self.n_items))
        batches = [order[i : i + self.batch_size] for i in range(0, self.n_items, self.batch_size)]
        if batches and len(batches[-1]) < self.world_size:
            batches.pop()
        return batches

    def _share(self, batch_length: int) -> slice:
        # As even as possible; the first ``extra`` ranks take one more clip of an uneven last batch.
        per_rank, extra = divmod(batch_length, self.world_size)
        start = self.rank * per_rank + min(self.rank, extra)
        return slice(start, start + per_rank + (self.rank < extra))

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self._share(len(batch))]

    def __len__(self) -> int:
        return len(self.global_batches())

    def loss_weights(self) -> list[float]:
        """Per step, this rank's share of the global batch times ``world_size``.

        DDP averages gradients over ranks; scaling each rank's mean loss by this makes the average equal the
        gradient of the global batch's mean loss even when the shares are unequal (1.0 when they are equal).
        """
        weights = []
        for batch in self.global_batches():
            share = self._share(len(batch))
            weights.append((share.stop - share.start) * self.world_size / len(batch))
        return weights


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: every rank uses the sum, so the gradient of each rank's input is
    the sum of all ranks' gradients. (``torch.distributed.nn.functional.all_reduce`` does the same but is
    deprecated in recent PyTorch, and its replacement is private.)"""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor.clone())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad.clone())


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, for CPU (gloo) runs.

    ``nn.SyncBatchNorm`` accepts GPU tensors only; this does the same with one differentiable all-reduce
    of per-channel sums, sums of squares and counts in float64 (so the one-pass variance loses nothing to
    cancellation). Outside distributed training mode it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, height, width)
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        local = x.double()
        count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
        stats = torch.cat([local.sum(dim=(0, 2, 3)), local.square().sum(dim=(0, 2, 3)), count])
        stats = _AllReduceSum.apply(stats)  # gradients flow back to every rank's activations
        channels = x.shape[1]
        n = stats[-1]
        mean = stats[:channels] / n
        var = stats[channels : 2 * channels] / n - mean.square()  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked) if self.momentum is None else float(self.momentum)
                )
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, channels, 1, 1)
        scale = torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        y = (x - mean.to(x.dtype).view(shape)) * scale
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm normalise over the global batch: ``nn.SyncBatchNorm`` on CUDA, and
    :class:`GlobalBatchNorm2d` on CPU where SyncBatchNorm refuses to run. Parameters and buffers are
    reused, so state dicts keep their keys and model files load into plain BatchNorm."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            replacement = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                replacement.weight, replacement.bias = child.weight, child.bias
            if child.track_running_stats:
                replacement.running_mean = child.running_mean
                replacement.running_var = child.running_var
                replacement.num_batches_tracked = child.num_batches_tracked
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            convert_batchnorm(child, device)
    return module


def reduce_epoch_stats(stats: EpochStats, context: DistributedContext) -> EpochStats:
    """The epoch's figures over all ranks: loss and accuracy weighted by each rank's clip count, the
    slowest rank's seconds, the mean data-wait fraction."""
    if not context.distributed:
        return stats
    sums = torch.tensor(
        [stats.loss * stats.n_clips, stats.accuracy * stats.n_clips, stats.n_clips, stats.data_wait_fraction],
        dtype=torch.float64,
        device=context.device,
    )
    all_reduce_sum(sums)
    seconds = torch.tensor([stats.seconds], dtype=torch.float64, device=context.device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    n_clips = int(round(sums[2].item()))
    return replace(
        stats,
        loss=sums[0].item() / max(n_clips, 1),
        accuracy=round(sums[1].item()) / max(n_clips, 1),
        n_clips=n_clips,
        seconds=seconds.item(),
        data_wait_fraction=sums[3].item() / context.world_size,
    )


def evaluate_sharded(
    model: nn.Module,
    dataset: FeatureDataset,
    batch_size: int,
    device: torch.device,
    context: DistributedContext,
) -> Predictions:
    """:func:`~urbansound.training.loop.evaluate` over ``dataset``, split over ranks.

    Rank ``r`` scores clips ``r, r + world_size, ...`` (eval mode: a clip's output does not depend on its
    batch mates) and every rank receives all predictions in dataset order, so all ranks agree on the
    validation accuracy, the best epoch and early stopping.
    """
    if not context.distributed:
        return evaluate(model, make_loader(dataset, batch_size, shuffle=False, device=device), device)
    n = len(dataset)
    shard = FeatureDataset(
        dataset.features, dataset.labels, dataset.indices[context.rank :: context.world_size]
    )
    part = evaluate(model, make_loader(shard, batch_size, shuffle=False, device=device), device)
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, (part.loss * len(part.labels), part.labels, part.probabilities))
    labels = np.zeros(n, dtype=np.int64)
    n_classes = max(p.shape[1] for _, _, p in gathered)
    probabilities = np.zeros((n, n_classes), dtype=np.float32)
    total_loss = 0.0
    for rank, (loss_sum, rank_labels, rank_probabilities) in enumerate(gathered):
        total_loss += loss_sum
        if len(rank_labels):
            labels[rank :: context.world_size] = rank_labels
            probabilities[rank :: context.world_size] = rank_probabilities
    accuracy = float((probabilities.argmax(1) == labels).mean()) if n else 0.0
    return Predictions(
        loss=total_loss / max(n, 1), accuracy=accuracy, labels=labels, probabilities=probabilities
    )
