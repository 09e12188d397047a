"""Moving small host tensors to the device without stalling it; where work that a device cannot do runs."""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``, without waiting for the device's queued work.

    A plain ``.to("cuda")`` of pageable host memory blocks the host until the copy is done, and the copy waits
    for every kernel queued before it: one per training step (a mask, a permutation, batch indices) drains
    the GPU's queue, and the GPU then idles while the host launches the next step. Pinned memory with
    ``non_blocking`` queues the copy instead (PyTorch's pinned-memory cache keeps the block alive until the
    copy has run).
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def variant_device(device: torch.device) -> torch.device:
    """Where the audio variants of a run on ``device`` are computed: there, except on Apple's MPS, which has
    no float64 (the phase vocoder sums phases in float64, :func:`urbansound.features.stretch.phase_vocoder`),
    where the CPU computes them."""
    return torch.device("cpu") if device.type == "mps" else device
