"""Fresh audio variants: a new augmented version of each training clip every epoch, on the training device.

The default keeps ``variants`` fixed versions of each clip in the feature cache, computed once, because
stretch and pitch shift cost milliseconds per clip on a CPU. On a GPU they are cheap enough to redo every
epoch (``--fresh-variants``): the training clips' audio stays in memory, and at the start of each epoch the
clips that would have drawn a cached variant get a variant never seen before. The same clips are augmented
as with cached variants (:meth:`urbansound.training.loop.FeatureDataset.set_epoch` draws the same choices),
only the versions differ, so the two modes compare cleanly.

A fresh variant is a function of (file, epoch, seed) alone, whichever rank or resumed process computes it
on one kind of device (white noise comes from the device's own generator): resuming stays exact, and under
torchrun each rank computes only the clips of its own batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from urbansound.config import AudioConfig, AugmentConfig, FeatureConfig
from urbansound.devices import variant_device
from urbansound.features.augment import make_variants
from urbansound.features.cache import variant_batch_size
from urbansound.features.frontend import make_frontend

logger = logging.getLogger(__name__)

# Variant numbers of fresh variants are FRESH_VARIANT_BASE + epoch, far from the cached ones
# (0 .. variants - 1), so no epoch repeats a cached variant.
FRESH_VARIANT_BASE = 1_000_000


class FreshVariants:
    """The training clips' waveforms ``(clips, samples)`` (rows follow the training set) and what turns them
    into one epoch's variant features.

    Args:
        waveforms: float32 ``(clips, samples)`` host array at ``audio.sample_rate``.
        keys: each clip's cache key (:func:`urbansound.features.cache.file_key`): the variants' random draws
            depend on it, as cached variants' do.
        dtype: the feature cache's dtype, so a fresh variant is stored as precisely as a cached one.
    """

    def __init__(
        self,
        waveforms: np.ndarray,
        keys: Sequence[str],
        augment: AugmentConfig,
        audio: AudioConfig,
        features: FeatureConfig,
        dtype: np.dtype,
    ) -> None:
        if len(keys) != len(waveforms):
            raise ValueError(f"{len(keys)} keys for {len(waveforms)} waveforms")
        self.waveforms = waveforms
        self.keys = list(keys)
        self.augment = augment
        self.audio = audio
        self.features = features
        self.dtype = torch.from_numpy(np.empty(0, dtype)).dtype
        self._frontends: dict[torch.device, torch.nn.Module] = {}

    @property
    def count(self) -> int:
        """The cached-variant count whose share of augmented clips fresh variants keep."""
        return self.augment.variants

    def frontend(self, device: torch.device) -> torch.nn.Module:
        """A front end of the run's feature settings on ``device`` (one per device, never moved)."""
        if device not in self._frontends:
            self._frontends[device] = make_frontend(self.features, self.audio.sample_rate).to(device)
        return self._frontends[device]

    def compute(
        self, epoch: int, seed: int, positions: Sequence[int], device: str | torch.device
    ) -> torch.Tensor:
        """``epoch``'s variant features of the clips at ``positions``, on ``device`` (computed there, or on
        the CPU where the device cannot: :func:`~urbansound.devices.variant_device`).

        Returns:
            ``(clips, 1, n_bands, frames)`` in the cache's dtype: row ``p`` holds clip ``p``'s variant for
            every ``p`` in ``positions``; other rows are zero (no batch of this process reads them).
        """
        target = torch.device(device)
        device = variant_device(target)
        frontend = self.frontend(device)
        started = time.perf_counter()
        shape = (len(self.keys), 1, self.features.n_mels, frontend.n_frames(self.audio.n_samples))
        table = torch.zeros(shape, dtype=self.dtype, device=device)
        wanted = sorted(set(positions))
        batch = variant_batch_size(device)
        numbers = [FRESH_VARIANT_BASE + epoch]
        with torch.no_grad():  # not inference_mode: the table is read later, outside it
            for start in range(0, len(wanted), batch):
                rows = wanted[start : start + batch]
                waves = torch.from_numpy(self.waveforms[rows]).to(device)  # (b, samples)
                keys = [self.keys[r] for r in rows]
                variant = make_variants(waves, keys, self.augment, self.audio.sample_rate, seed, numbers)
                features = frontend(variant[:, 0]).to(self.dtype)  # (b, n_bands, frames)
                table[torch.tensor(rows, device=device), 0] = features
        logger.info(
            "epoch %d: fresh variants of %d clip(s) on %s in %.1f s",
            epoch,
            len(wanted),
            device,
            time.perf_counter() - started,
        )
        return table.to(target)
