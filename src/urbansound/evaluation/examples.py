"""The exploratory figure: a raw waveform per class with its log-mel spectrogram and gammatonegram."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from urbansound.config import AudioConfig, FeatureConfig
from urbansound.data.audio import load_audio
from urbansound.data.datasets import load_dataset
from urbansound.evaluation.plots import ClassExample, plot_class_examples
from urbansound.features.frontend import SpectrogramFrontend
from urbansound.features.spectrogram import band_frequencies

KIND_LABELS = {"mel_spec": "log-mel (dB)", "gammatone": "gammatonegram (dB)"}


def draw_class_examples(
    annotations: str | Path, data_dir: str | Path, out: Path, audio: AudioConfig, features: FeatureConfig
) -> Path:
    """Plot the first clip of every class: waveform, log-mel spectrogram and gammatonegram."""
    index = load_dataset(annotations, data_dir, skip_bad=True)
    frontends = {
        kind: SpectrogramFrontend(dataclasses.replace(features, kind=kind), audio.sample_rate)
        for kind in KIND_LABELS
    }
    examples = []
    for class_id, class_name in enumerate(index.class_names):
        record = next((r for r in index.records if r.class_id == class_id), None)
        if record is None:
            continue
        waveform = load_audio(record.path, audio.sample_rate, audio.n_samples)
        with torch.inference_mode():
            batch = torch.from_numpy(waveform)[None]
            spectrograms = {label: frontends[kind](batch)[0].numpy() for kind, label in KIND_LABELS.items()}
        examples.append(
            ClassExample(
                class_name=class_name,
                file_name=record.slice_file_name,
                waveform=waveform,
                sample_rate=audio.sample_rate,
                spectrograms=spectrograms,
                hop_length=features.hop_length,
                band_hz={
                    label: band_frequencies(frontends[kind].config, audio.sample_rate)
                    for kind, label in KIND_LABELS.items()
                },
            )
        )
    return plot_class_examples(examples, Path(out))
