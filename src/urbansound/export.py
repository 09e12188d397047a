"""Export a model file to ONNX or TorchScript, with a parity check against PyTorch.

Both exports take **raw mono audio** ``(batch, samples)`` at the model's sample rate (float32 in [-1, 1])
and return ``logits`` and ``probabilities`` ``(batch, n_classes)`` (the probabilities with the model file's
calibration temperature), ``level_dbfs`` ``(batch,)`` (each window's RMS level) and ``silent`` ``(batch,)``
(level below the model file's silence floor: report ``silence``, not a class, as
:mod:`urbansound.inference` does); the whole pipeline (spectrogram, band normalisation, network) is inside
the exported graph. The model was trained on windows of ``spec.audio.n_samples`` samples, and both exports
refuse any other length with an error naming the expected one (another length would silently change the
answer): right-pad shorter recordings with zeros, cut longer ones into windows, as inference does. The
ONNX graph has a fixed window length (onnxruntime: "Got invalid dimensions for input: audio ... Expected:
N"); the TorchScript module checks it in a scripted guard. ``too_short`` (a recording under
``reject.min_input_s``) is decided before padding, by the caller, from the metadata's ``spec``.

ONNX has no complex tensors, and the TorchScript-based exporter cannot export ``torch.stft`` with
``return_complex=True``. The ONNX graph therefore computes the STFT as a ``conv1d`` whose fixed kernels
are the Hann-windowed DFT basis (``w[n] cos(2 pi k n / N)`` and ``-w[n] sin(2 pi k n / N)``), strided by
the hop, after the same zero ``center`` padding: mathematically the same as ``torch.stft``, exportable
with standard operators (Pad, Conv, Mul, MatMul, Log, ReduceMax), and equal to PyTorch's output to float32
rounding. Frequency bins that no filterbank band uses are left out of the kernels.

The exporter is torch's TorchScript-based one (``dynamo=False``): it needs no ``onnxscript`` and works
offline; the dynamo exporter is torch's default since 2.9 but would add that dependency.

File names say the input: ``model.audio.onnx`` and ``model.audio.torchscript.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from urbansound import __version__
from urbansound.data.synth import CLASS_NAMES as SYNTH_CLASSES
from urbansound.data.synth import synthesize_background, synthesize_event
from urbansound.errors import ConfigError, DataError
from urbansound.features.frontend import SpectrogramFrontend
from urbansound.features.pretrained import PretrainedFrontend
from urbansound.features.spectrogram import power_to_db
from urbansound.inference import LEVEL_FLOOR_DBFS
from urbansound.modelfile import ModelSpec, load_model_file
from urbansound.models.classifier import AudioClassifier

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
# What the exported models take; part of the file name so that a file says how to feed it.
INPUT_KIND = "audio"
SUFFIXES = {"onnx": f".{INPUT_KIND}.onnx", "torchscript": f".{INPUT_KIND}.torchscript.pt"}
# ONNX opset: 17 is supported by every onnxruntime since 1.11 and has all the operators used here.
OPSET = 17
# What the exported graphs return, in order (the module docstring says their shapes).
OUTPUT_NAMES = ("logits", "probabilities", "level_dbfs", "silent")
# Largest accepted |probability difference| between the export and PyTorch on the parity inputs.
PARITY_TOLERANCE = 1e-4


class ConvSpectrogramFrontend(nn.Module):
    """:class:`SpectrogramFrontend`'s output with the STFT computed as a conv1d over DFT-basis kernels.

    Waveforms ``(batch, samples)`` -> dB band energies ``(batch, n_bands, 1 + samples // hop_length)``.
    """

    def __init__(self, frontend: SpectrogramFrontend) -> None:
        super().__init__()
        config = frontend.config
        self.n_fft, self.hop_length, self.top_db = config.n_fft, config.hop_length, config.top_db
        filterbank = frontend.filterbank.detach().double()  # (n_bands, n_fft // 2 + 1)
        used = (filterbank != 0).any(dim=0)  # bins that some band reads; the others cost conv work only
        bins = torch.arange(self.n_fft // 2 + 1, dtype=torch.float64)[used]
        n = torch.arange(self.n_fft, dtype=torch.float64)
        angle = 2.0 * math.pi * bins[:, None] * n[None, :] / self.n_fft  # (n_used, n_fft) radians
        window = frontend.window.detach().double()[None, :]
        # Built in float64 and rounded once, so the kernels are as exact as float32 allows.
        kernels = torch.cat([window * torch.cos(angle), -window * torch.sin(angle)])  # (2 n_used, n_fft)
        self.n_used = int(bins.numel())
        self.register_buffer("kernels", kernels[:, None, :].float())  # (2 n_used, 1, n_fft)
        self.register_buffer("filterbank", filterbank[:, used].float())  # (n_bands, n_used)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # waveform: (batch, samples). Zero padding by n_fft // 2 on both sides is torch.stft's center=True.
        padded = F.pad(waveform.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2))  # (batch, 1, padded)
        spectrum = F.conv1d(padded, self.kernels, stride=self.hop_length)  # (batch, 2 n_used, frames)
        real, imag = spectrum[:, : self.n_used], spectrum[:, self.n_used :]
        power = real * real + imag * imag  # (batch, n_used, frames)
        bands = torch.matmul(self.filterbank, power)  # (batch, n_bands, frames)
        return power_to_db(bands, self.top_db)


class WindowLengthCheck(nn.Module):
    """Refuses waveforms that are not ``(batch, window)``; compiled with ``torch.jit.script`` so that the
    check survives tracing (a traced ``if`` on a shape would be frozen to the example's answer)."""

    def __init__(self, window: int, sample_rate: int) -> None:
        super().__init__()
        self.window = window
        self.sample_rate = sample_rate

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 2 or audio.size(1) != self.window:
            raise ValueError(
                "expected mono float32 waveforms of shape (batch, "
                + str(self.window)
                + ") at "
                + str(self.sample_rate)
                + " Hz (the model's window; right-pad shorter audio with zeros), got shape "
                + str(audio.shape)
            )
        return audio


class WithProbabilities(nn.Module):
    """The classifier's outputs as the exported files give them: audio ``(batch, samples)`` ->
    ``(logits, probabilities, level_dbfs, silent)``: ``(batch, n_classes)`` twice, then ``(batch,)`` twice.
    Adds the calibrated softmax, the level and the silence rule; the pipeline is the wrapped
    :class:`~urbansound.models.classifier.AudioClassifier`'s. ``check`` (a scripted
    :class:`WindowLengthCheck`) refuses other window lengths."""

    def __init__(
        self,
        classifier: AudioClassifier,
        temperature: float = 1.0,
        silence_floor_dbfs: float | None = None,
        check: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.temperature = temperature
        # No floor: a level no window can have (the reported level is at least LEVEL_FLOOR_DBFS).
        self.floor = LEVEL_FLOOR_DBFS - 1.0 if silence_floor_dbfs is None else silence_floor_dbfs
        self.check = check

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.check is not None:
            audio = self.check(audio)
        logits = self.classifier(audio)  # (batch, n_classes)
        power = torch.mean(audio.double() * audio.double(), dim=1)  # (batch,); float64 as inference
        level = torch.clamp(10.0 * torch.log10(power), min=LEVEL_FLOOR_DBFS).float()  # (batch,) dBFS
        return logits, torch.softmax(logits / self.temperature, dim=-1), level, level < self.floor


def exported_module(model: AudioClassifier, spec: ModelSpec, check_length: bool) -> WithProbabilities:
    """:class:`WithProbabilities` with the model file's temperature and silence floor (and, with
    ``check_length``, the scripted window-length guard)."""
    check = torch.jit.script(WindowLengthCheck(spec.audio.n_samples, spec.audio.sample_rate))
    return WithProbabilities(
        model, spec.temperature, spec.reject.silence_floor_dbfs, check if check_length else None
    ).eval()


@dataclass
class ExportResult:
    """Where the export went and how closely it matches PyTorch on the parity inputs."""

    path: Path
    format: str
    input: str  # "audio": raw mono waveforms at ``sample_rate``
    sample_rate: int  # Hz
    window_samples: int  # samples per window the model was trained on
    max_abs_diff_probabilities: float | None  # None when the check could not run
    max_abs_diff_logits: float | None


def parity_inputs(spec: ModelSpec, n: int = 8, seed: int = 0) -> np.ndarray:
    """Real-looking test windows ``(n, window_samples)``: synthetic urban sounds over background noise.

    Zeros or white noise would leave most of the network's range untested; these resemble what it sees.
    """
    rng = np.random.default_rng(seed)
    sr, duration = spec.audio.sample_rate, spec.audio.duration
    windows = []
    for i in range(n):
        noise = synthesize_background(duration, sr, rng) * rng.uniform(0.01, 0.1)
        event = synthesize_event(SYNTH_CLASSES[i % len(SYNTH_CLASSES)], duration, sr, rng)
        mix = noise + event * rng.uniform(0.05, 0.8)
        windows.append(mix[: spec.audio.n_samples])
    return np.stack(windows).astype(np.float32)


def reference_outputs(
    model: AudioClassifier, audio: np.ndarray, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch logits and (at ``temperature``) probabilities ``(batch, n_classes)`` of the classifier."""
    with torch.inference_mode():
        logits = model(torch.from_numpy(audio))
    return logits.numpy(), torch.softmax(logits / temperature, dim=-1).numpy()


def default_output(model_path: Path, fmt: str) -> Path:
    """``runs/x/model.safetensors`` -> ``runs/x/model.audio.onnx`` (or ``.audio.torchscript.pt``)."""
    return model_path.with_name(model_path.name.split(".")[0] + SUFFIXES[fmt])


def _metadata(spec: ModelSpec) -> dict[str, str]:
    """What a user of the exported file needs besides the graph, stored in the file itself."""
    return {
        "input": INPUT_KIND,
        "input_description": (
            f"mono float32 waveforms (batch, samples) in [-1, 1] at {spec.audio.sample_rate} Hz; "
            f"trained on windows of {spec.audio.n_samples} samples ({spec.audio.duration} s)"
        ),
        "sample_rate": str(spec.audio.sample_rate),
        "window_samples": str(spec.audio.n_samples),
        "silence_floor_dbfs": json.dumps(spec.reject.silence_floor_dbfs),
        "min_input_s": str(spec.reject.min_input_s),
        "temperature": str(spec.temperature),
        "class_names": json.dumps(spec.class_names),
        "spec": spec.to_json(),
        "urbansound_version": __version__,
    }


def export_onnx(model: AudioClassifier, spec: ModelSpec, path: Path) -> None:
    """Write ``model`` as ONNX: input ``audio`` (dynamic batch, fixed window length), outputs logits,
    probabilities, level_dbfs, silent."""
    import onnx  # optional dependency: the "export" extra

    # The same classifier with the STFT computed as a convolution (see the module docstring); it shares the
    # normaliser and backbone modules, so it is the model file's classifier but for that front end.
    onnx_classifier = AudioClassifier(
        # A pretrained network's front end is already a convolution (features/pretrained.py).
        model.frontend
        if isinstance(model.frontend, PretrainedFrontend)
        else ConvSpectrogramFrontend(model.frontend),
        model.normalizer,
        model.backbone,
        inputs=model.inputs,
        views=model.views,
    )
    wrapper = exported_module(onnx_classifier, spec, check_length=False)  # the length is fixed instead
    example = torch.from_numpy(parity_inputs(spec, n=2))
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is no longer the default (chosen on purpose, see the
        # module docstring) and that strided slices are not constant-folded (there are none to fold).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["audio"],
            output_names=list(OUTPUT_NAMES),
            # Only the batch is dynamic: a window of another length would silently change the answer.
            dynamic_axes={name: {0: "batch"} for name in ("audio", *OUTPUT_NAMES)},
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for key, value in _metadata(spec).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_torchscript(model: AudioClassifier, spec: ModelSpec, path: Path) -> None:
    """Write ``model`` as a traced TorchScript module (audio in; logits, probabilities out).

    Traced with the original front end (``torch.stft``), which TorchScript runs natively; the spec is
    stored as the extra file ``spec.json``.
    """
    wrapper = exported_module(model, spec, check_length=True)
    example = torch.from_numpy(parity_inputs(spec, n=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        traced.save(str(path), _extra_files={"spec.json": json.dumps(_metadata(spec))})


def run_onnx(path: Path, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and probabilities of an exported ONNX model under onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"audio": audio})
    return logits, probabilities


def run_torchscript(path: Path, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and probabilities of an exported TorchScript model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still widely deployed
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        logits, probabilities = module(torch.from_numpy(audio))[:2]
    return logits.numpy(), probabilities.numpy()


def export_model(
    model_path: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    check: bool = True,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Export a model file (or a run or cross-validation folder's) and (with ``check``) verify it against
    PyTorch on synthetic urban sounds.

    Raises:
        ConfigError: unknown format.
        DataError: the model file is unreadable, or the export differs from PyTorch by more than
            ``tolerance`` in any probability (the file is removed then).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    from urbansound.training.run_folder import resolve_model_file  # training modules load on demand

    model_path = resolve_model_file(model_path)  # a run folder's file, so the export lands beside it
    model, spec = load_model_file(model_path)
    path = Path(output) if output is not None else default_output(model_path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        (export_onnx if fmt == "onnx" else export_torchscript)(model, spec, tmp)
        diff_p = diff_l = None
        if check:
            audio = parity_inputs(spec, n=8, seed=1)  # other inputs than the tracing example
            logits, probabilities = reference_outputs(model, audio, spec.temperature)
            got_logits, got_probabilities = (run_onnx if fmt == "onnx" else run_torchscript)(tmp, audio)
            diff_p = float(np.abs(got_probabilities - probabilities).max())
            diff_l = float(np.abs(got_logits - logits).max())
            logger.info("%s parity: max |dp| %.2e, max |dlogit| %.2e", fmt, diff_p, diff_l)
            if not diff_p <= tolerance:
                raise DataError(
                    f"{fmt} export of {model_path} differs from PyTorch by {diff_p:.2e} in probability "
                    f"(tolerance {tolerance:.0e}); not written"
                )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(
        path=path,
        format=fmt,
        input=INPUT_KIND,
        sample_rate=spec.audio.sample_rate,
        window_samples=spec.audio.n_samples,
        max_abs_diff_probabilities=diff_p,
        max_abs_diff_logits=diff_l,
    )
