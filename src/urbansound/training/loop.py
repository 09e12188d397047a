"""One epoch of training, and evaluation, over cached features."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from tqdm import tqdm

from urbansound.devices import to_device
from urbansound.features.augment import mixup_batch
from urbansound.features.fresh_variants import FreshVariants
from urbansound.models.classifier import AudioClassifier


class FeatureDataset(Dataset):
    """Cached dB features ``(n_bands, frames)`` and integer labels for a subset of clips.

    Indexed with a whole list of positions at once (the loader uses a BatchSampler and ``batch_size=None``),
    so a batch is one fancy-indexing read from the memory map instead of ``batch_size`` small ones.
    """

    def __init__(
        self,
        features: np.ndarray,
        labels: Sequence[int],
        indices: Sequence[int],
        variants: np.ndarray | None = None,
        seed: int = 0,
        fresh: FreshVariants | None = None,
    ) -> None:
        self.features = features
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        # variants: (len(indices), n_variants, n_bands, frames), row i holding augmented copies of clip
        # indices[i]. Each epoch picks the original or one variant per clip (see set_epoch).
        self.variants = variants
        self.seed = seed
        # Fresh variants (rows follow indices): clips are augmented as often as with ``fresh.count`` cached
        # variants, and the training loop replaces ``variants`` every epoch with that epoch's
        # (len(indices), 1, n_bands, frames) table.
        self.fresh = fresh
        self.choice = np.zeros(len(self.indices), dtype=np.int64)  # 0: original, k: variants[:, k - 1]

    @property
    def fresh_count(self) -> int:
        """The cached-variant count whose share of augmented clips fresh variants keep (0: no fresh ones)."""
        return self.fresh.count if self.fresh is not None else 0

    def set_epoch(self, epoch: int) -> None:
        """Pick each clip's version for ``epoch``: a function of (seed, epoch) alone, so resuming is exact.

        With fresh variants the draw is the one ``fresh_count`` cached variants would make, so the same
        clips are augmented in both modes; each takes this epoch's fresh variant (choice 1)."""
        count = self.fresh_count or (self.variants.shape[1] if self.variants is not None else 0)
        if count:
            rng = np.random.default_rng([self.seed, epoch, 7919])
            self.choice = rng.integers(0, count + 1, size=len(self.indices))
            if self.fresh_count:
                self.choice = np.minimum(self.choice, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        positions = np.asarray(positions)
        rows = self.indices[positions]
        x = np.asarray(self.features[rows], dtype=np.float32)  # (batch, n_bands, frames)
        if self.variants is not None:
            for k, position in enumerate(positions):
                if self.choice[position]:
                    x[k] = self.variants[position, self.choice[position] - 1]
        return torch.from_numpy(x), torch.from_numpy(self.labels[rows])

    def __getstate__(self) -> dict[str, object]:
        # Workers started by spawn/forkserver (macOS, Windows) get a pickled dataset: send the memory map's
        # file name, not its contents, so no worker holds its own copy of every feature.
        state = dict(self.__dict__)
        state["fresh"] = None  # the training clips' audio: workers only read the epoch's table
        features = self.features
        if isinstance(features, np.memmap) and features.filename:
            reopened = np.load(features.filename, mmap_mode="r")
            if reopened.shape == features.shape and reopened.dtype == features.dtype:
                state["features"] = ("memmap", features.filename)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        features = state["features"]
        if isinstance(features, tuple) and features[0] == "memmap":
            state["features"] = np.load(features[1], mmap_mode="r")
        self.__dict__.update(state)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s shuffle: single-process and distributed runs draw the same order."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    sampler: Sampler[int] | None = None,
) -> Sampler[list[int]]:
    """The batches of positions of one epoch: shuffled by a generator of (seed, epoch) alone, so a resumed
    run sees the same batches, whichever of the two data paths (loader or device-resident) serves them."""
    if sampler is None:
        if shuffle:
            sampler = RandomSampler(dataset, generator=epoch_generator(seed, epoch))
        else:
            sampler = SequentialSampler(dataset)
    return BatchSampler(sampler, batch_size=batch_size, drop_last=False)


def make_loader(
    dataset: FeatureDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    batch_sampler: Sampler[list[int]] | None = None,
    device: torch.device | None = None,
) -> DataLoader:
    """A loader whose order is a function of (seed, epoch) alone, so a resumed run sees the same batches.

    ``batch_sampler`` (e.g. a rank's share of the global batches) replaces the shuffle and ``batch_size``.
    Batches are pinned for fast copies when ``device`` (where they go) is a CUDA GPU, and only then: a CPU
    run on a GPU machine would otherwise start CUDA and copy every batch for nothing.
    """
    if batch_sampler is None:
        batch_sampler = epoch_batches(dataset, batch_size, shuffle, seed, epoch, sampler)
    return DataLoader(
        dataset,
        sampler=batch_sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device is not None and device.type == "cuda",
    )


def _device_copy(
    array: np.ndarray, rows: np.ndarray | None, device: torch.device, chunk: int = 512
) -> torch.Tensor:
    """``array[rows]`` (or all of it) as one tensor on ``device``, copied ``chunk`` clips at a time so a
    memory map is never read whole into host memory first."""
    n = len(rows) if rows is not None else array.shape[0]
    out = torch.empty(
        (n, *array.shape[1:]), dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device
    )
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = array[rows[start:stop]] if rows is not None else array[start:stop]
        out[start:stop] = torch.from_numpy(np.array(block)).to(device)  # a copy: memory maps are read-only
    return out


class ResidentFeatures:
    """A :class:`FeatureDataset` held in device memory: features, variants and labels are copied to
    ``device`` once (in the cache's dtype: all of UrbanSound8K at the default settings is ~200 MB in
    float16), and each batch is gathered by index there, with no DataLoader, worker or host-to-device copy
    per step. Batches hold exactly the values the loader path would serve, in the same order.
    """

    def __init__(self, dataset: FeatureDataset, device: torch.device) -> None:
        self.dataset = dataset
        self.device = device
        self.features = _device_copy(dataset.features, dataset.indices, device)  # (clips, n_bands, frames)
        self.labels = torch.from_numpy(dataset.labels[dataset.indices]).to(device)  # (clips,)
        # (clips, n_variants, n_bands, frames), row i holding the variants of clip i, or None; with fresh
        # variants, replaced by each epoch's table (already on the device)
        self.variants: torch.Tensor | None = None
        if dataset.variants is not None:
            self.variants = _device_copy(dataset.variants, None, device)

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_sampler: Sampler[list[int]]) -> ResidentBatches:
        """An iterable of ``(features float32 (batch, n_bands, frames), labels (batch,))`` on the device."""
        return ResidentBatches(self, batch_sampler)

    def gather(self, positions: torch.Tensor, choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at ``positions`` (device indices), each clip in the version ``choice`` picks
        (0: original, k: variant k - 1), as :meth:`FeatureDataset.__getitem__` would serve it."""
        x = self.features[positions]  # (batch, n_bands, frames)
        if self.variants is not None:
            picked = choice[positions]  # (batch,)
            variant = self.variants[positions, (picked - 1).clamp_min(0)]  # (batch, n_bands, frames)
            x = torch.where((picked > 0)[:, None, None], variant, x)
        return x.float(), self.labels[positions]


class ResidentBatches:
    """One epoch of :class:`ResidentFeatures` batches; reads the dataset's variant choice when iterated,
    so ``set_epoch`` may come after it is made (as with a DataLoader)."""

    def __init__(self, resident: ResidentFeatures, batch_sampler: Sampler[list[int]]) -> None:
        self.resident, self.batch_sampler = resident, batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.resident.device
        choice = to_device(torch.from_numpy(self.resident.dataset.choice), device)
        # Iterating a DataLoader draws its workers' base seed from torch's global generator; drawing it here
        # too leaves that generator (SpecAugment's masks, mixup's pairs) where the loader path leaves it, so
        # both paths train to the same weights and a checkpoint of one resumes exactly in the other.
        torch.empty((), dtype=torch.int64).random_()
        batches = list(self.batch_sampler)
        # The epoch's positions go to the device in one copy; a copy per batch would stall it every step.
        order = to_device(torch.tensor([p for batch in batches for p in batch], dtype=torch.int64), device)
        start = 0
        for batch in batches:
            yield self.resident.gather(order[start : start + len(batch)], choice)
            start += len(batch)


def class_labels(targets: torch.Tensor) -> torch.Tensor:
    """The integer labels ``(batch,)`` of a batch's targets: the labels themselves, or column 0 of
    distillation targets ``(batch, 1 + n_classes)`` (label, then the teacher's probabilities)."""
    return targets if targets.dim() == 1 else targets[:, 0].long()


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    n_clips: int
    seconds: float
    data_wait_fraction: float  # share of the epoch spent waiting for the next batch


@dataclass
class StepSettings:
    """How each training step computes and applies its loss (defaults: plain cross-entropy, no extras).

    ``scaler`` scales the loss for float16 autocast; ``loss_weights`` (one per batch) weight each batch's
    mean loss before backward, for distributed runs whose ranks hold unequal shares of a global batch.
    With ``mixup_alpha > 0`` every batch is mixup-ed (:func:`urbansound.features.augment.mixup_batch`);
    the reported accuracy is then against the dominant clip's label, so it reads lower than without mixup.
    ``after_step`` runs after every optimiser step (the weight average's update).
    """

    criterion: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    loss_weights: Sequence[float] | None = None
    mixup_alpha: float = 0.0
    mixup_domain: str = "db"
    after_step: Callable[[], None] | None = None


def train_one_epoch(
    model: AudioClassifier,
    loader: DataLoader | Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    settings: StepSettings | None = None,
    progress: bool = False,
    desc: str = "train",
) -> EpochStats:
    """One pass over ``loader``; the scheduler steps every batch (one-cycle). ``settings``: see
    :class:`StepSettings`."""
    settings = settings or StepSettings()
    criterion = settings.criterion or nn.CrossEntropyLoss()
    model.train()
    # float64 sums where the device has them (MPS has no float64)
    sum_dtype = torch.float32 if device.type == "mps" else torch.float64
    total_loss = torch.zeros((), dtype=sum_dtype, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = step = 0
    wait = 0.0
    start = time.perf_counter()
    # disable=None: a bar on a terminal only; logs get the per-epoch line from fit().
    bar = tqdm(total=len(loader), desc=desc, unit="batch", disable=None if progress else True, leave=False)
    iterator = iter(loader)
    while True:
        fetch = time.perf_counter()
        try:
            features, labels = next(iterator)
        except StopIteration:
            break
        features, labels = features.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        wait += time.perf_counter() - fetch
        if settings.mixup_alpha > 0:
            features, labels_a, labels_b, lam = mixup_batch(
                features, labels, settings.mixup_alpha, settings.mixup_domain
            )
            logits = model.classify_features(features)
            loss = lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)
            labels = labels_a if lam >= 0.5 else labels_b
        else:
            logits = model.classify_features(features)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        weighted = loss if settings.loss_weights is None else loss * settings.loss_weights[step]
        if settings.scaler is None:
            weighted.backward()
            optimizer.step()
        else:
            settings.scaler.scale(weighted).backward()
            settings.scaler.step(optimizer)
            settings.scaler.update()
        if scheduler is not None:
            scheduler.step()
        if settings.after_step is not None:
            settings.after_step()
        total_loss += loss.detach().to(sum_dtype) * labels.shape[0]
        correct += (logits.detach().argmax(1) == class_labels(labels)).sum()
        seen += labels.shape[0]
        step += 1
        bar.update(1)
        if progress and bar.n % 10 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    return EpochStats(
        loss=total_loss.item() / max(seen, 1),
        accuracy=correct.item() / max(seen, 1),
        n_clips=seen,
        seconds=seconds,
        data_wait_fraction=wait / seconds if seconds > 0 else 0.0,
    )


@dataclass
class Predictions:
    loss: float
    accuracy: float
    labels: np.ndarray  # (clips,)
    probabilities: np.ndarray  # (clips, n_classes)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


@torch.no_grad()
def evaluate(model: AudioClassifier, loader: DataLoader, device: torch.device) -> Predictions:
    """Cross-entropy, accuracy and class probabilities over ``loader``, in eval mode.

    Sums and probabilities stay on the device until the end: one transfer per evaluation, not one (and a
    wait for the device) per batch.
    """
    model.eval()
    total_loss = torch.zeros((), device=device)
    all_labels, all_probs = [], []
    for features, labels in loader:
        features, labels = features.to(device), labels.to(device)
        logits = model.classify_features(features).float()  # (batch, n_classes)
        total_loss += nn.functional.cross_entropy(logits, labels, reduction="sum")
        all_probs.append(torch.softmax(logits, dim=1))
        all_labels.append(labels)
    if not all_labels:
        return Predictions(0.0, 0.0, np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))
    labels_np = torch.cat(all_labels).cpu().numpy()
    probs = torch.cat(all_probs).cpu().numpy()
    accuracy = float((probs.argmax(1) == labels_np).mean())
    return Predictions(
        loss=float(total_loss) / len(labels_np), accuracy=accuracy, labels=labels_np, probabilities=probs
    )
