"""Knowledge distillation: one student model trained on a finished run's soft labels (its ensemble's).

The teacher is the run's model file (a seed ensemble in the default recipe). Its class probabilities at
temperature ``T`` are computed once for each of its training clips and each of their cached audio variants,
the clips and variants the teacher itself trained on; the test fold and the validation hold-out are never
given to the teacher. The student then trains exactly as a member of the run would (same split, recipe,
augmentation, schedule and seed) but with the loss of Hinton et al. (2015)::

    weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - weight) * CE(student, label)

and its run folder is an ordinary one: the model file loads through ``Predictor`` like any other.

>>> student_dir = distill(Path("runs/20260101-run"), "resnet", DistillConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from urbansound.config import DistillConfig, RunConfig
from urbansound.errors import DataError
from urbansound.features.views import normaliser_statistics
from urbansound.io_utils import atomic_write_json
from urbansound.modelfile import load_model_file
from urbansound.models.classifier import AudioClassifier
from urbansound.training.distributed import DistributedContext
from urbansound.training.fit import fit
from urbansound.training.hardware import kernel_choice
from urbansound.training.loop import FeatureDataset
from urbansound.training.run import (
    Member,
    PreparedData,
    _initial_member,
    assemble,
    model_spec,
    prepare_data,
    resolve_device,
    score,
    start_run_folder,
    write_results,
)
from urbansound.training.run_folder import RunFolder

logger = logging.getLogger(__name__)


class DistillationLoss(nn.Module):
    """Hinton et al.'s loss on targets ``(batch, 1 + n_classes)``: the true label, then the teacher's
    probabilities at ``temperature``; plain (label-smoothed) cross-entropy on integer targets ``(batch,)``
    (validation)."""

    def __init__(self, temperature: float, weight: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.weight = weight
        self.hard = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # logits: (batch, n_classes); targets: (batch,) labels or (batch, 1 + n_classes)
        if targets.dim() == 1:
            return self.hard(logits, targets)
        labels, teacher = targets[:, 0].long(), targets[:, 1:].float()
        t = self.temperature
        student = torch.log_softmax(logits.float() / t, dim=-1)
        soft = nn.functional.kl_div(student, teacher, reduction="batchmean") * t * t
        return self.weight * soft + (1 - self.weight) * self.hard(logits, labels)


class SoftTargetDataset(FeatureDataset):
    """A :class:`FeatureDataset` of training clips whose targets are ``(batch, 1 + n_classes)``: the label,
    then the teacher's probabilities for the version of the clip drawn this epoch (``soft``:
    ``(len(indices), 1 + n_variants, n_classes)``, version 0 the original). Carries its loss
    (``criterion``), which :func:`~urbansound.training.fit.fit` uses instead of cross-entropy."""

    def __init__(
        self,
        features: np.ndarray,
        labels: Sequence[int],
        indices: Sequence[int],
        soft: np.ndarray,
        criterion: nn.Module,
        variants: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(features, labels, indices, variants=variants, seed=seed)
        if soft.shape[0] != len(self.indices):
            raise ValueError(f"{soft.shape[0]} soft-label rows for {len(self.indices)} clips")
        self.soft = soft
        self.criterion = criterion

    def __getitem__(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = super().__getitem__(positions)
        positions = np.asarray(positions)
        soft = self.soft[positions, self.choice[positions]]  # (batch, n_classes)
        targets = np.concatenate([labels.numpy()[:, None].astype(np.float32), soft], axis=1)
        return x, torch.from_numpy(targets)


@torch.no_grad()
def teacher_soft_targets(
    teacher: AudioClassifier, data: PreparedData, temperature: float, device: torch.device, batch: int = 64
) -> np.ndarray:
    """The teacher's class probabilities at ``temperature`` for every training clip (``data.split.train``
    only) and each of its cached variants: ``(len(split.train), 1 + n_variants, n_classes)`` float32."""
    rows = np.asarray(data.split.train)
    if set(rows.tolist()) & set(data.split.test):
        raise DataError("the teacher's training clips include test clips; refusing to distil from them")
    teacher.eval()
    versions = 1 + (data.variants.shape[1] if data.variants is not None else 0)
    out: list[np.ndarray] = []
    for start in range(0, len(rows), batch):
        chunk = slice(start, start + batch)
        per_version = [np.array(data.features[rows[chunk]], dtype=np.float32)]  # (b, n_bands, frames)
        if data.variants is not None:
            variants = np.array(data.variants[chunk], dtype=np.float32)  # (b, V, n_bands, frames)
            per_version += [variants[:, v] for v in range(versions - 1)]
        probabilities = [
            torch.softmax(teacher.classify_features(torch.from_numpy(x).to(device)).float() / temperature, -1)
            for x in per_version
        ]
        out.append(torch.stack(probabilities, dim=1).cpu().numpy())  # (b, versions, n_classes)
    return np.concatenate(out).astype(np.float32)


def student_config(teacher: RunConfig, model_name: str, runs_dir: Path) -> RunConfig:
    """The teacher's run configuration with one ``model_name`` model (the teacher's options when it is the
    teacher's family) and a run folder beside the teacher's."""
    config = copy.deepcopy(teacher)
    kwargs = dict(teacher.model.kwargs) if model_name == teacher.model.name else {}
    config.model = replace(teacher.model, name=model_name, kwargs=kwargs, ensemble=1)
    config.name = f"distill-{model_name}"
    config.runs_dir = str(runs_dir)
    # Soft targets travel with the loader's batches; the device-resident path serves labels only.
    config.training.data_on_device = "no"
    # The teacher's soft targets are computed once per version of a clip, so the student trains on cached
    # variants even when its teacher drew fresh ones.
    config.augment.fresh_variants = False
    return config


def train_student(
    config: RunConfig,
    data: PreparedData,
    soft: np.ndarray,
    settings: DistillConfig,
    folder: RunFolder,
    device: torch.device,
    progress: bool = True,
) -> Member:
    """Fit the student on ``soft`` targets as a single member of ``config``'s run would train."""
    mean, std = normaliser_statistics(config, data.features, data.split.train)
    model = _initial_member(model_spec(config, data), config.training, mean, std, False)
    loss = DistillationLoss(settings.temperature, settings.weight, config.training.label_smoothing)
    train_set = SoftTargetDataset(
        data.features,
        data.labels,
        data.split.train,
        soft,
        loss,
        variants=data.variants,
        seed=config.training.seed,
    )
    val_set = FeatureDataset(data.features, data.labels, data.split.val)
    context = DistributedContext(device=device)
    with kernel_choice(device, config.training.deterministic):
        result = fit(
            model,
            train_set,
            val_set,
            config.training,
            config.augment,
            context,
            folder.checkpoint_path(1),
            folder.history_path(1),
            progress=progress,
        )
    model.load_state_dict(result.best_state)
    return Member(model=model.eval(), result=result, seed=config.training.seed)


def distill(
    run_dir: Path, model_name: str, settings: DistillConfig, progress: bool = True, seed: int | None = None
) -> Path:
    """Train one ``model_name`` student on the soft labels of the finished run in ``run_dir``; returns the
    student's run folder (beside the teacher's), which also holds ``distillation.json``. ``seed``: the
    student's (default: the teacher run's seed, that of its first member)."""
    settings.validate()
    teacher_folder = RunFolder(Path(run_dir))
    if not teacher_folder.model_path.is_file():
        raise DataError(f"{teacher_folder.model_path}: no model file (is {run_dir} a finished run folder?)")
    config = student_config(teacher_folder.read_config(), model_name, teacher_folder.path.parent)
    if seed is not None:
        config.training.seed = seed
    config.validate()
    started = time.perf_counter()
    device = resolve_device(config.training.device)
    data = prepare_data(config, progress=progress, device=device)
    config.model.n_classes = len(data.index.class_names)
    teacher, _ = load_model_file(teacher_folder.model_path, device)
    soft = teacher_soft_targets(teacher, data, settings.temperature, device)
    del teacher
    folder = start_run_folder(config, data, None, False)
    atomic_write_json(
        folder.file(RunFolder.DISTILLATION),
        {"teacher": str(teacher_folder.model_path.resolve()), "model": model_name, **asdict(settings)},
        "the distillation settings",
    )
    with folder.logging_to_file():  # train.log, as every training run folder has
        logger.info(
            "distilling %s into %s (T=%g, weight %g) on %d training clips x %d versions",
            teacher_folder.path,
            model_name,
            settings.temperature,
            settings.weight,
            soft.shape[0],
            soft.shape[1],
        )
        member = train_student(config, data, soft, settings, folder, device, progress)
        assembled = assemble(config, data, [member], device)
        metrics = score(assembled.model, [member], data, config, device)
        write_results(folder, config, assembled, [member], metrics, started)
    return folder.path
