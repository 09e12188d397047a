"""Transfer learning: pretrained front ends against their reference formulas, checkpoints written in each
project's exact format (tiny widths, the real layer names), strict loading and its errors, fine-tuning,
freezing, the model file, and ONNX parity. Nothing is downloaded."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from urbansound.api import Classifier
from urbansound.config import (
    AudioConfig,
    AugmentConfig,
    ModelConfig,
    RunConfig,
    SplitConfig,
    TrainingConfig,
    apply_recipe,
    use_backbone_front_end,
)
from urbansound.errors import ConfigError, DataError
from urbansound.export import export_model, parity_inputs
from urbansound.features.pretrained import PretrainedFrontend
from urbansound.modelfile import ModelSpec, build_classifier, load_model_file, save_model_file
from urbansound.models import create_model
from urbansound.models.backbones import find_backbone
from urbansound.training.fit import make_optimizer
from urbansound.training.probe import fit_probe
from urbansound.training.run import train
from urbansound.training.run_folder import RunFolder
from urbansound.training.transfer import BackboneFreezer
from urbansound.transfer import init_from

CLASSES = ["air_conditioner", "car_horn", "dog_bark"]
TINY_CNN14 = [4, 8, 8, 8, 8, 8]  # the real layer names, widths small enough for a test
TINY_CNN10 = [4, 8, 8, 8]
TINY_MN = 0.1  # EfficientAT's mn01 width


def waves(n: int, seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """Tones in noise, ``(n, samples)`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    rows = [
        0.3 * np.sin(2 * np.pi * rng.uniform(200, 4000) * t) + 0.05 * rng.standard_normal(t.size)
        for _ in range(n)
    ]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def spec_for(model_name: str, duration: float = 1.0, **kwargs: object) -> ModelSpec:
    config = RunConfig(model=ModelConfig(name=model_name, kwargs=dict(kwargs)))
    config.audio.duration = duration
    use_backbone_front_end(config)
    return ModelSpec(audio=config.audio, features=config.features, model=config.model, class_names=CLASSES)


def panns_release_state(
    widths: list[int], sample_rate: int, n_fft: int, f_max: float
) -> dict[str, torch.Tensor]:
    """A PANNs release's "model" dict: the network at 527 classes plus torchlibrosa's fixed front-end
    tensors, computed here from librosa and the DFT definition (not from urbansound's front end)."""
    name = "panns_cnn14" if len(widths) == 6 else "panns_cnn10"
    state = create_model(name, n_classes=527, n_bands=64, widths=widths).state_dict()
    window = librosa.filters.get_window("hann", n_fft, fftbins=True)
    n = np.arange(n_fft)
    dft = np.exp(-2j * np.pi * np.outer(n, n) / n_fft)[:, : n_fft // 2 + 1] * window[:, None]
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.tensor(
        np.real(dft).T[:, None, :], dtype=torch.float32
    )
    state["spectrogram_extractor.stft.conv_imag.weight"] = torch.tensor(
        np.imag(dft).T[:, None, :], dtype=torch.float32
    )
    mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=64, fmin=50, fmax=f_max).T
    state["logmel_extractor.melW"] = torch.tensor(mel, dtype=torch.float32)
    return state


def calibrate_batchnorm(model: torch.nn.Module, forward: Callable[[], object]) -> None:
    """Give a randomly initialised network's BatchNorm layers the statistics of one batch, as a trained
    network has statistics of its data (with 0 and 1, activations vanish through a deep random network)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one pass sets the batch's statistics
    model.train()
    with torch.no_grad():
        forward()
    model.eval()


@pytest.fixture
def cnn14_release(tmp_path: Path) -> Path:
    path = tmp_path / "Cnn14_mAP=0.431.pth"
    torch.manual_seed(1)
    torch.save({"model": panns_release_state(TINY_CNN14, 32_000, 1024, 14_000), "iteration": 600000}, path)
    return path


# --- front ends against their reference formulas -------------------------------------------------------


def test_panns_front_end_is_torchlibrosa_log_mel() -> None:
    spec = spec_for("panns_cnn14")
    frontend = PretrainedFrontend(spec.features, spec.audio.sample_rate)
    x = waves(2, 1.0, 32_000)
    window = torch.hann_window(1024, periodic=True)
    power = (
        torch.stft(x, 1024, 320, window=window, center=True, pad_mode="reflect", return_complex=True).abs()
        ** 2
    )
    mel = torch.from_numpy(librosa.filters.mel(sr=32_000, n_fft=1024, n_mels=64, fmin=50, fmax=14_000))
    expected = 10 * torch.log10(torch.clamp(mel @ power, min=1e-10))  # power_to_db, ref 1.0, top_db None
    got = frontend(x)
    assert got.shape == expected.shape == (2, 64, frontend.n_frames(32_000))
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # dB


def reference_kaldi_banks(n_mels: int, n_fft: int, sr: float, low: float, high: float) -> torch.Tensor:
    """torchaudio.compliance.kaldi.get_mel_banks (no VTLN) as written there, plus the Nyquist zero column."""

    def mel(f: torch.Tensor | float) -> torch.Tensor:
        return 1127.0 * torch.log(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)

    delta = (mel(high) - mel(low)) / (n_mels + 1)
    b = torch.arange(n_mels, dtype=torch.float64).unsqueeze(1)
    left, centre, right = mel(low) + b * delta, mel(low) + (b + 1) * delta, mel(low) + (b + 2) * delta
    m = mel(sr / n_fft * torch.arange(n_fft // 2, dtype=torch.float64)).unsqueeze(0)
    banks = torch.clamp(torch.min((m - left) / (centre - left), (right - m) / (right - centre)), min=0)
    return F.pad(banks, (0, 1)).float()


def test_efficientat_front_end_is_augment_mel_stft_at_evaluation() -> None:
    spec = spec_for("efficientat_mn10")
    frontend = PretrainedFrontend(spec.features, spec.audio.sample_rate)
    x = waves(2, 1.0, 32_000, seed=1)
    # EfficientAT's AugmentMelSTFT.forward with training off (models/preprocess.py)
    y = F.conv1d(x.unsqueeze(1), torch.tensor([[[-0.97, 1.0]]])).squeeze(1)
    window = torch.hann_window(800, periodic=False)
    stft = torch.stft(
        y, 1024, hop_length=320, win_length=800, center=True, window=window, return_complex=True
    )
    banks = reference_kaldi_banks(128, 1024, 32_000, 0.0, 15_000.0)
    expected = (torch.log(banks @ stft.abs() ** 2 + 1e-5) + 4.5) / 5.0
    got = frontend(x)
    assert got.shape == expected.shape == (2, 128, frontend.n_frames(32_000))
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_kaldi_fbank_matches_transformers_ast_feature_extractor() -> None:
    transformers = pytest.importorskip("transformers")
    extractor = transformers.ASTFeatureExtractor(
        do_normalize=False, max_length=98
    )  # numpy path, no torchaudio
    spec = spec_for("hf_ast", config={"model_type": "audio-spectrogram-transformer", "num_mel_bins": 128})
    frontend = PretrainedFrontend(spec.features, spec.audio.sample_rate)
    x = waves(2, 1.0, 16_000, seed=2)
    expected = extractor([row.numpy() for row in x], sampling_rate=16_000, return_tensors="pt")[
        "input_values"
    ]
    got = frontend(x)  # (batch, n_mels, frames)
    assert got.shape[-1] == frontend.n_frames(16_000) == 98
    torch.testing.assert_close(got.transpose(1, 2), expected.float(), atol=2e-3, rtol=0)


# --- PANNs checkpoints ------------------------------------------------------------------------------------


def test_panns_release_loads_strictly_and_replaces_the_head(cnn14_release: Path) -> None:
    spec = spec_for("panns_cnn14", widths=TINY_CNN14)
    model = build_classifier(spec)
    reset = init_from(model, str(cnn14_release), "panns_cnn14")
    release = torch.load(cnn14_release, weights_only=True)["model"]
    assert reset == ["fc_audioset.bias", "fc_audioset.weight"]
    state = model.backbone.state_dict()
    assert set(state) == {k for k in release if not k.startswith(("spectrogram_", "logmel_"))}
    for key in ("bn0.running_mean", "conv_block6.conv2.weight", "fc1.weight"):
        torch.testing.assert_close(state[key], release[key], rtol=0, atol=0)
    assert state["fc_audioset.weight"].shape == (len(CLASSES), TINY_CNN14[-1])


def test_a_release_saved_from_the_registered_backbone_round_trips(tmp_path: Path) -> None:
    # The issue's own definition of the format: {"model": create_model(...).state_dict()}.
    torch.manual_seed(0)
    source = create_model("panns_cnn10", n_classes=527, n_bands=64, widths=TINY_CNN10)
    path = tmp_path / "Cnn10.pth"
    torch.save({"model": source.state_dict()}, path)
    model = build_classifier(spec_for("panns_cnn10", widths=TINY_CNN10))
    init_from(model, str(path), "panns_cnn10")
    torch.testing.assert_close(model.backbone.conv_block4.bn2.weight, source.conv_block4.bn2.weight)


def test_a_release_in_torchs_legacy_pickle_format_loads(cnn14_release: Path, tmp_path: Path) -> None:
    # Releases from 2020 may predate torch.save's zip format; weights_only reads both without running code.
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(cnn14_release, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80" and cnn14_release.read_bytes()[:2] == b"PK"
    model = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    assert init_from(model, str(legacy), "panns_cnn14") == ["fc_audioset.bias", "fc_audioset.weight"]


def test_wrong_architecture_names_expected_format_and_tensors(tmp_path: Path) -> None:
    path = tmp_path / "Cnn10_mAP=0.380.pth"
    torch.save({"model": panns_release_state(TINY_CNN10, 32_000, 1024, 14_000)}, path)
    model = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    with pytest.raises(
        ConfigError, match=r"not the weights of PANNs Cnn14.*PANNs release \.pth.*missing \['conv_block5"
    ):
        init_from(model, str(path), "panns_cnn14")


def test_a_16k_release_is_refused_by_the_32k_model_for_its_front_end(tmp_path: Path) -> None:
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": panns_release_state(TINY_CNN14, 16_000, 512, 8_000)}, path)
    model = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    with pytest.raises(ConfigError, match="its front end .* is not panns_cnn14's .*panns_cnn14_16k"):
        init_from(model, str(path), "panns_cnn14")
    model16 = build_classifier(spec_for("panns_cnn14_16k", widths=TINY_CNN14))
    assert init_from(model16, str(path), "panns_cnn14_16k") == ["fc_audioset.bias", "fc_audioset.weight"]


def test_truncated_and_foreign_files_are_clear_errors(cnn14_release: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(cnn14_release.read_bytes()[: cnn14_release.stat().st_size // 2])
    model = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    with pytest.raises(
        DataError, match=r"cut.pth: truncated or unreadable PyTorch checkpoint.*PANNs release"
    ):
        init_from(model, str(truncated), "panns_cnn14")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="neither an urbansound model file nor a PyTorch checkpoint"):
        init_from(model, str(text), "panns_cnn14")
    # A PANNs release given to a model trained from scratch, and to EfficientAT.
    cnn = build_classifier(replace(spec_for("panns_cnn14"), model=ModelConfig(name="cnn")))
    with pytest.raises(ConfigError, match="starts only from urbansound model files"):
        init_from(cnn, str(cnn14_release), "cnn")
    mn = build_classifier(spec_for("efficientat_mn04", width=TINY_MN))
    with pytest.raises(
        ConfigError, match="a PANNs release\\?\\); efficientat_mn04 expects an EfficientAT .pt"
    ):
        init_from(mn, str(cnn14_release), "efficientat_mn04")


# --- EfficientAT checkpoints ------------------------------------------------------------------------------


def test_efficientat_state_dict_loads_strictly(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = create_model("efficientat_mn04", n_classes=527, n_bands=128, width=TINY_MN)
    path = tmp_path / "mn01_as_mAP_298.pt"
    torch.save(source.state_dict(), path)
    # EfficientAT's names: stem features.0, SE as conc_se_layers, the mlp head's classifier.2 / classifier.5;
    # at mn01's width the fourth block has no expansion conv (expanded == input channels), as there.
    keys = set(source.state_dict())
    assert {
        "features.0.0.weight",
        "features.4.block.1.conc_se_layers.0.fc1.weight",
        "classifier.5.bias",
    } <= keys
    mn10 = create_model("efficientat_mn10", n_classes=527, n_bands=128).state_dict()
    assert mn10["features.4.block.2.conc_se_layers.0.fc1.weight"].shape == (24, 72)  # make_divisible(72 // 4)
    assert mn10["features.16.0.weight"].shape == (960, 160, 1, 1) and mn10["classifier.5.weight"].shape == (
        527,
        1280,
    )
    model = build_classifier(spec_for("efficientat_mn04", width=TINY_MN))
    assert init_from(model, str(path), "efficientat_mn04") == ["classifier.5.bias", "classifier.5.weight"]
    torch.testing.assert_close(model.backbone.classifier[2].weight, source.classifier[2].weight)
    wide = build_classifier(spec_for("efficientat_mn04"))  # the real mn04 width: another architecture
    with pytest.raises(ConfigError, match=r"not the weights of EfficientAT MobileNetV3 mn04.*file \("):
        init_from(wide, str(path), "efficientat_mn04")
    panns = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    with pytest.raises(ConfigError, match="no 'model' state dict in it; panns_cnn14 expects a PANNs release"):
        init_from(panns, str(path), "panns_cnn14")


# --- Hugging Face -----------------------------------------------------------------------------------------


@pytest.fixture
def ast_directory(tmp_path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.ASTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        num_mel_bins=128,
        max_length=120,
        frequency_stride=32,
        time_stride=32,
        num_labels=len(CLASSES),
    )
    torch.manual_seed(3)
    folder = tmp_path / "tiny-ast"
    transformers.ASTForAudioClassification(config).save_pretrained(folder)
    transformers.ASTFeatureExtractor(max_length=120).save_pretrained(folder)
    return folder


def test_hf_ast_directory_gives_the_same_logits_as_transformers(ast_directory: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = RunConfig(
        model=ModelConfig(name="hf_ast"), training=TrainingConfig(init_from=str(ast_directory))
    )
    config.audio.duration = 1.0
    use_backbone_front_end(config)
    assert config.audio.sample_rate == 16_000 and config.features.kind == "kaldi_fbank"
    spec = ModelSpec(audio=config.audio, features=config.features, model=config.model, class_names=CLASSES)
    model = build_classifier(spec).eval()
    assert init_from(model, str(ast_directory), "hf_ast") == []  # same class count: nothing replaced
    reference = transformers.ASTForAudioClassification.from_pretrained(ast_directory).eval()
    extractor = transformers.ASTFeatureExtractor.from_pretrained(ast_directory)
    x = waves(2, 1.0, 16_000, seed=4)
    inputs = extractor([row.numpy() for row in x], sampling_rate=16_000, return_tensors="pt")
    with torch.inference_mode():
        expected = reference(**inputs).logits
        got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    cnn10 = build_classifier(spec_for("panns_cnn10", widths=TINY_CNN10))
    with pytest.raises(
        ConfigError, match="a Hugging Face model; --model panns_cnn10 expects a PANNs release"
    ):
        init_from(cnn10, str(ast_directory), "panns_cnn10")


def test_hf_truncated_weights_are_a_data_error(ast_directory: Path) -> None:
    weights = ast_directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    config = RunConfig(
        model=ModelConfig(name="hf_ast"), training=TrainingConfig(init_from=str(ast_directory))
    )
    use_backbone_front_end(config)
    spec = ModelSpec(audio=config.audio, features=config.features, model=config.model, class_names=CLASSES)
    with pytest.raises(DataError, match="tiny-ast: truncated or unreadable weights"):
        init_from(build_classifier(spec), str(ast_directory), "hf_ast")


# --- configuration ----------------------------------------------------------------------------------------


def test_finetune_recipe_takes_the_backbones_front_end_and_refuses_others() -> None:
    from urbansound.cli import resolve_config

    args = argparse.Namespace(recipe="finetune", **{"model.name": "efficientat_mn10"})
    config = resolve_config(args)
    assert (
        config.features == find_backbone("efficientat_mn10").features and config.audio.sample_rate == 32_000
    )
    assert config.training.backbone_lr_scale < 1 and config.training.head_warmup_epochs >= 1
    clash = argparse.Namespace(recipe="finetune", **{"audio.sample_rate": 22_050})
    with pytest.raises(
        ConfigError, match="panns_cnn14 .* only fits its own front end: audio.sample_rate 22050"
    ):
        resolve_config(clash)
    edited = apply_recipe(RunConfig(), "finetune")
    edited.features.n_mels = 128
    with pytest.raises(ConfigError, match="panns_cnn14 .* takes 32000 Hz"):
        edited.validate()


# --- fine-tuning ------------------------------------------------------------------------------------------


def test_panns_bn0_takes_standardised_bands_with_the_same_result(cnn14_release: Path) -> None:
    model = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    init_from(model, str(cnn14_release), "panns_cnn14")
    with torch.no_grad():  # a release has AudioSet's statistics in bn0; the tiny one gets some here
        model.backbone.bn0.running_mean.uniform_(-60, -20)
        model.backbone.bn0.running_var.uniform_(50, 200)
    model.eval()
    features = model.frontend(waves(3, 1.0, 32_000, seed=10))  # dB
    with torch.inference_mode():
        before = model.classify_features(features)
    mean, std = features.mean(dim=(0, 2)), features.std(dim=(0, 2))
    model.normalizer.set_statistics(mean, std)
    model.backbone.absorb_input_statistics(model.normalizer.mean, model.normalizer.std)
    with torch.inference_mode():
        after = model.classify_features(features)
    assert not torch.allclose(model.normalizer(features), features)  # the input really changed
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-4)


def test_backbone_lr_is_a_share_of_the_heads_and_a_few_steps_lower_the_loss(cnn14_release: Path) -> None:
    model = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    init_from(model, str(cnn14_release), "panns_cnn14")
    training = TrainingConfig(max_lr=3e-3, backbone_lr_scale=0.1, scheduler="cosine", epochs=1)
    optimizer, scheduler = make_optimizer(model, training, steps_per_epoch=12)
    assert [g["max_lr"] for g in optimizer.param_groups] == pytest.approx([3e-4, 3e-3])
    head = {id(p) for p in model.backbone.fc_audioset.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == head
    x = waves(6, 1.0, 32_000, seed=5)
    features = model.frontend(x)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    model.train()
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model.classify_features(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_a_frozen_backbone_keeps_weights_and_batchnorm_statistics(cnn14_release: Path) -> None:
    model = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    init_from(model, str(cnn14_release), "panns_cnn14")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    training = TrainingConfig(freeze_backbone=True, max_lr=1e-2)
    optimizer, _ = make_optimizer(model, training, steps_per_epoch=3)
    freezer = BackboneFreezer(model)
    freezer.update(training, epoch=1)
    features = model.frontend(waves(4, 1.0, 32_000, seed=6))
    model.train()  # as the training loop does: the frozen layers must stay in evaluation mode anyway
    for _ in range(3):
        loss = F.cross_entropy(model.classify_features(features), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.backbone.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed == ["fc_audioset.bias", "fc_audioset.weight"]
    assert not model.backbone.bn0.training and model.backbone.fc_audioset.training
    freezer.update(replace(training, freeze_backbone=False, head_warmup_epochs=1), epoch=2)  # warm-up over
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_finetune_run_gives_a_model_file_that_predicts_and_exports(
    tiny_dataset: Path, cnn14_release: Path, tmp_path: Path
) -> None:
    config = apply_recipe(RunConfig(), "finetune")
    config.annotations = str(tiny_dataset / "metadata" / "UrbanSound8K.csv")
    config.data_dir = str(tiny_dataset / "audio")
    config.audio = AudioConfig(sample_rate=32_000, duration=1.0)
    config.model.kwargs = {"widths": TINY_CNN14}
    config.split = SplitConfig(test_fold=3, val_fold=2)
    config.training = replace(
        config.training, epochs=2, batch_size=8, device="cpu", init_from=str(cnn14_release), max_lr=3e-3
    )
    config.runs_dir, config.cache_dir, config.name = str(tmp_path / "runs"), str(tmp_path / "cache"), "ft"
    run_dir = train(config, progress=False)
    folder = RunFolder(run_dir)
    metrics = json.loads(folder.metrics_path.read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    model, spec = load_model_file(folder.model_path)
    assert spec.model.name == "panns_cnn14" and spec.features.kind == "panns_log_mel"
    assert model.normalizer.mean.abs().max() > 1  # dB statistics measured, taken into bn0
    # The model file holds the backbone exactly: re-saving and re-loading gives the same outputs.
    x = waves(3, 1.0, 32_000, seed=7)
    again = save_model_file(tmp_path / "again.safetensors", model, spec)
    reloaded, _ = load_model_file(again)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)
    result = export_model(folder.model_path, "onnx", output=tmp_path / "ft.audio.onnx")
    assert result.max_abs_diff_probabilities is not None and result.max_abs_diff_probabilities < 1e-4
    # The Python API: a clip at another rate is resampled to the backbone's 32 kHz; embeddings are fc1's.
    classifier = Classifier.from_file(folder.model_path)
    clip = waves(1, 1.0, 22_050, seed=9)[0].numpy()
    assert classifier.predict(clip, sample_rate=22_050).label in spec.class_names
    assert classifier.embed(clip, sample_rate=22_050).shape == (TINY_CNN14[-1],)


def test_a_probe_embeds_each_clip_once_and_learns_the_head(cnn14_release: Path) -> None:
    model = build_classifier(spec_for("panns_cnn14", widths=TINY_CNN14))
    init_from(model, str(cnn14_release), "panns_cnn14")
    rng = np.random.default_rng(11)
    t = np.arange(32_000) / 32_000
    tones = (300.0, 1500.0, 6000.0)  # one class per tone, in noise
    labels = [i % 3 for i in range(24)]
    clips = [0.3 * np.sin(2 * np.pi * tones[c] * t) + 0.05 * rng.standard_normal(t.size) for c in labels]
    features = model.frontend(torch.tensor(np.stack(clips), dtype=torch.float32)).numpy()
    calibrate_batchnorm(model, lambda: model.classify_features(torch.from_numpy(features)))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if not k.startswith("fc_audioset")}
    calls = []
    model.backbone.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    training = TrainingConfig(freeze_backbone=True, epochs=30, batch_size=6, max_lr=3e-2, scheduler="cosine")
    result = fit_probe(
        model, features, labels, (list(range(18)), list(range(18, 24))), training, AugmentConfig()
    )
    assert sum(calls) == 24  # every clip through the backbone once, whatever the number of epochs
    assert len(result.history) == 30 and result.best_val_accuracy > 0.8  # 5 of 6 at least; chance: 1 / 3
    assert result.history[-1]["train_loss"] < 0.8 * result.history[0]["train_loss"]
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the backbone is as released


@pytest.mark.slow
def test_a_linear_probe_run_keeps_the_released_weights(
    tiny_dataset: Path, cnn14_release: Path, tmp_path: Path
) -> None:
    from urbansound.cli import resolve_config

    args = argparse.Namespace(
        recipe="finetune",
        annotations=str(tiny_dataset / "metadata" / "UrbanSound8K.csv"),
        data_dir=str(tiny_dataset / "audio"),
        **{
            "audio.duration": 1.0,
            "model.kwargs": [("widths", TINY_CNN14)],
            "split.test_fold": 3,
            "split.val_fold": 2,
            "training.epochs": 1,
            "training.batch_size": 8,
            "training.device": "cpu",
            "training.init_from": str(cnn14_release),
            "training.freeze_backbone": True,
            "runs_dir": str(tmp_path / "runs"),
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    run_dir = train(resolve_config(args), progress=False)
    model, _ = load_model_file(RunFolder(run_dir).model_path)
    release = torch.load(cnn14_release, weights_only=True)["model"]
    for key, value in model.backbone.state_dict().items():
        if key.startswith("conv_block") or key.startswith("fc1") or key in ("bn0.weight", "bn0.bias"):
            assert torch.equal(value, release[key]), key  # frozen: exactly as released
    assert model.backbone.fc_audioset.weight.shape == (10, TINY_CNN14[-1])  # the synthetic set's 10 classes


@pytest.mark.parametrize(
    ("name", "options"),
    [("panns_cnn10", {"widths": TINY_CNN10}), ("efficientat_mn04", {"width": TINY_MN})],
)
def test_onnx_export_parity_of_pretrained_backbones(
    name: str, options: dict[str, object], tmp_path: Path
) -> None:
    spec = spec_for(name, **options)
    torch.manual_seed(4)
    model = build_classifier(spec)
    audio = torch.from_numpy(parity_inputs(spec, n=8, seed=1))
    # A fresh network's BatchNorm statistics (0 and 1) let activations vanish, and a fresh head answers
    # near-uniformly: both would hide a difference. Statistics from these inputs and a larger head instead.
    calibrate_batchnorm(model, lambda: model(audio))
    with torch.no_grad():
        logits = model.eval()(audio)
        spread = (logits - logits.mean(dim=0)).std()  # how much the answer depends on the input
        for layer in model.output_layers():
            layer.weight.mul_(2.0 / spread)  # logits that differ by ~2 between inputs
        probabilities = torch.softmax(model(audio), dim=-1)
    assert probabilities.std(dim=0).max() > 0.05  # answers that depend on the input
    path = save_model_file(tmp_path / "model.safetensors", model, spec)
    result = export_model(path, "onnx")
    assert result.max_abs_diff_probabilities is not None and result.max_abs_diff_probabilities < 1e-4
    assert result.max_abs_diff_logits is not None and result.max_abs_diff_logits < 1e-3


def test_onnx_export_parity_of_hf_ast(ast_directory: Path, tmp_path: Path) -> None:
    config = RunConfig(
        model=ModelConfig(name="hf_ast"), training=TrainingConfig(init_from=str(ast_directory))
    )
    config.audio.duration = 1.0
    use_backbone_front_end(config)
    spec = ModelSpec(audio=config.audio, features=config.features, model=config.model, class_names=CLASSES)
    model = build_classifier(spec).eval()
    init_from(model, str(ast_directory), "hf_ast")
    with torch.no_grad():  # a fresh head answers near-uniformly, which would hide a difference
        model.backbone.model.classifier.dense.weight.mul_(10.0)
    path = save_model_file(tmp_path / "ast.safetensors", model, spec)
    loaded, _ = load_model_file(path)  # rebuilt from the stored config alone: no directory, no hub
    x = waves(2, 1.0, 16_000, seed=8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        logits = model(x)
        assert (logits[0] - logits[1]).abs().max() > 0.2  # answers that depend on the input
    result = export_model(path, "onnx")
    assert result.max_abs_diff_probabilities is not None and result.max_abs_diff_probabilities < 1e-4
    assert result.max_abs_diff_logits is not None and result.max_abs_diff_logits < 1e-3


# --- the registry's checks, at tiny widths (test_models.py covers the families trained from scratch) -------

TINY_BACKBONES = [
    ("panns_cnn14", {"widths": TINY_CNN14}),
    ("panns_cnn10", {"widths": TINY_CNN10}),
    ("panns_cnn14_16k", {"widths": TINY_CNN14}),
    ("efficientat_mn04", {"width": TINY_MN}),
    ("efficientat_mn10", {"width": TINY_MN}),
]


@pytest.mark.parametrize(("name", "options"), TINY_BACKBONES)
@pytest.mark.parametrize("frames", [1, 37, 101])
def test_backbones_take_any_number_of_frames_and_give_finite_gradients(
    name: str, options: dict[str, object], frames: int
) -> None:
    torch.manual_seed(0)
    n_bands = find_backbone(name).features.n_mels
    model = create_model(name, n_classes=4, n_bands=n_bands, **options)
    x = torch.randn(4, 1, n_bands, frames)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-5)  # no batch-mate effect
