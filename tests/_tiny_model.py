"""A tiny trained model shared by the inference, export, CLI and serving tests.

It is trained here, in a few seconds, on synthetic windows: urban background noise alone ("background") or
with a car horn, dog bark or siren mixed in at a random level. Small enough to be fast (16 kHz, 1 s windows,
32 mel bands), yet a real trained model whose timeline can be checked against planted events.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from urbansound.config import AudioConfig, FeatureConfig, ModelConfig
from urbansound.data.synth import synthesize_background, synthesize_event
from urbansound.modelfile import ModelSpec, build_classifier, save_model_file

SAMPLE_RATE = 16_000  # Hz
WINDOW_S = 1.0  # seconds: the model's window
CLASS_NAMES = ["background", "car_horn", "dog_bark", "siren"]


def scene(
    event: str | None, duration: float, sample_rate: int, rng: np.random.Generator, snr_db: float = 12.0
) -> np.ndarray:
    """Background noise with ``event`` mixed over the whole duration at ``snr_db`` dB peak SNR."""
    noise = synthesize_background(duration, sample_rate, rng) * rng.uniform(0.02, 0.06)
    if event is None or event == "background":
        return noise
    sound = synthesize_event(event, duration, sample_rate, rng)
    return noise + sound * float(np.abs(noise).max()) * 10 ** (snr_db / 20)


def training_windows(
    per_class: int, rng: np.random.Generator, class_names: Sequence[str] = tuple(CLASS_NAMES)
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, samples)`` waveforms and ``(n,)`` labels, ``per_class`` windows of each class."""
    waves, labels = [], []
    for label, name in enumerate(class_names):
        for _ in range(per_class):
            waves.append(scene(name, WINDOW_S, SAMPLE_RATE, rng, snr_db=rng.uniform(6.0, 20.0)))
            labels.append(label)
    return np.stack(waves).astype(np.float32), np.asarray(labels)


@functools.cache
def tiny_model(dest: Path, epochs: int = 10, class_names: tuple[str, ...] = tuple(CLASS_NAMES)) -> Path:
    """Train and save ``dest/model.safetensors`` (cached per ``dest``, so one training serves a session);
    ``class_names``: "background" and synthetic classes (steady ones, e.g. siren, drilling, for events)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = ModelSpec(
        audio=AudioConfig(sample_rate=SAMPLE_RATE, duration=WINDOW_S),
        features=FeatureConfig(n_fft=512, hop_length=256, n_mels=32),
        model=ModelConfig(name="cnn", n_classes=len(class_names)),
        class_names=list(class_names),
    )
    model = build_classifier(spec)
    waves, labels = training_windows(24, rng, class_names)
    with torch.no_grad():
        features = model.frontend(torch.from_numpy(waves))  # (n, bands, frames)
    model.normalizer.set_statistics(features.mean(dim=(0, 2)), features.std(dim=(0, 2)))
    y = torch.from_numpy(labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    # One thread: on a busy 2-core machine, intra-op threads on such small tensors spin instead of working
    # (measured ~50x slower per step with 2 threads than with 1 while other jobs run).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            for batch in torch.randperm(len(y)).split(16):
                optimiser.zero_grad()
                loss_fn(model.classify_features(features[batch]), y[batch]).backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    dest.mkdir(parents=True, exist_ok=True)
    return save_model_file(dest / "model.safetensors", model, spec)
