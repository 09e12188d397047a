"""Model size and cost: trainable parameters and multiply-accumulates (MACs) per clip.

MACs are counted with forward hooks and hand-written per-layer formulas rather than thop or fvcore: neither
is a dependency, and the few layer types these models use need only a line each. Only weight products are
counted (convolutions, linear layers, recurrent layers' input and hidden matrices); biases, BatchNorm
(foldable into the conv at inference), activations, pooling, softmax and the recurrent gates' elementwise
products are not, nor is arithmetic done outside these modules (e.g. an attention-weighted sum).

>>> count_macs(nn.Conv2d(1, 8, kernel_size=3, padding=1), (1, 1, 64, 100))
460800
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from urbansound.config import AudioConfig, FeatureConfig, ModelConfig
from urbansound.errors import ConfigError


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), each shared tensor counted once."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def _conv_macs(module: nn.Conv1d | nn.Conv2d, inputs: tuple[object, ...], output: torch.Tensor) -> int:
    # Every output element is a dot product over (in_channels / groups) x kernel taps.
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def _linear_macs(module: nn.Linear, inputs: tuple[object, ...], output: torch.Tensor) -> int:
    # Every output element is a dot product over in_features; leading dimensions (batch, frames) multiply.
    return output.numel() * module.in_features


def _rnn_macs(module: nn.GRU | nn.LSTM, inputs: tuple[object, ...], output: object) -> int:
    # Per time step, layer and direction, each of the G gates (GRU 3, LSTM 4) multiplies the layer's input
    # (input_size for the first layer, h * directions above) and the previous state h by a matrix; an LSTM
    # with proj_size also projects its hidden_size cell output down to h = proj_size.
    sequence = inputs[0]
    if isinstance(sequence, PackedSequence):
        steps = sequence.data.shape[0]  # total valid steps over the batch
    elif isinstance(sequence, torch.Tensor):
        # (batch, frames, input) or (frames, batch, input): all steps of all clips; (frames, input) unbatched.
        steps = sequence.shape[0] * sequence.shape[1] if sequence.dim() == 3 else sequence.shape[0]
    else:
        raise TypeError(f"unexpected recurrent layer input {type(sequence).__name__}")
    gates = 3 if isinstance(module, nn.GRU) else 4
    directions = 2 if module.bidirectional else 1
    proj_size = getattr(module, "proj_size", 0)
    state = proj_size or module.hidden_size
    per_step = 0
    for layer in range(module.num_layers):
        layer_input = module.input_size if layer == 0 else state * directions
        layer_macs = gates * module.hidden_size * (layer_input + state) + proj_size * module.hidden_size
        per_step += layer_macs * directions
    return steps * per_step


# Layer type -> MACs of one call, from the module, its inputs and its output (summed over the batch).
_FORMULAS: dict[type[nn.Module], Callable[..., int]] = {
    nn.Conv1d: _conv_macs,
    nn.Conv2d: _conv_macs,
    nn.Linear: _linear_macs,
    nn.GRU: _rnn_macs,
    nn.LSTM: _rnn_macs,
}


def _formula(module: nn.Module) -> Callable[..., int] | None:
    """The formula for ``module``'s nearest counted base class (so subclasses of Linear count too), if any."""
    return next((_FORMULAS[cls] for cls in type(module).__mro__ if cls in _FORMULAS), None)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates per clip of one forward pass of ``model`` on a zero input of ``input_shape``.

    ``input_shape`` includes the batch dimension, e.g. ``(1, 1, 64, 345)`` for one 4 s clip of 64 bands; the
    total is divided by the batch size. The model runs in eval mode under ``torch.no_grad`` on the device of
    its parameters (CPU for a fresh model), and its training mode is restored afterwards. A module called
    twice is counted twice. See the module docstring for what is counted.
    """
    if not input_shape or input_shape[0] < 1 or any(size < 1 for size in input_shape):
        raise ConfigError(f"input_shape must be positive sizes with the batch first, got {input_shape}")
    total = 0

    def hook(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
        nonlocal total
        formula = _formula(module)
        assert formula is not None  # hooks are only registered on modules that have one
        total += formula(module, inputs, output)

    counted = [module for module in model.modules() if _formula(module) is not None]
    handles = [module.register_forward_hook(hook) for module in counted]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    # Each module's own flag, not just the root's: a caller may keep parts (e.g. frozen BatchNorm) in eval.
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()
    return total // input_shape[0]


def render_model_costs(
    audio: AudioConfig, features: FeatureConfig, model: ModelConfig, recipe: str, n_classes: int = 10
) -> str:
    """A table of every registered model's parameters and MACs per clip at these features; ``model`` (the
    recipe's) is priced with its options (e.g. the default recipe's quarter widths) and its ensemble size,
    the others with their own defaults."""
    from urbansound.features.views import InputChannels
    from urbansound.models.registry import create_model, list_models

    frames = 1 + audio.n_samples // features.hop_length
    width = max(12, *(len(name) for name in list_models()))  # the model column
    lines = [
        f"per {audio.duration:g} s clip at {audio.sample_rate} Hz: {features.n_mels} bands x {frames} frames "
        f"({recipe} recipe)",
        f"{'model':{width}s} {'parameters':>12s} {'MACs':>10s}",
    ]
    # The recipe's model takes its input channels (deltas, band position); the others one spectrogram.
    recipe_channels = InputChannels(model.deltas, model.freq_channel).channels
    total = (0, 0)  # the recipe's model: parameters and MACs of all its members
    for name in list_models():
        options = dict(model.kwargs) if name == model.name else {}
        channels = recipe_channels if name == model.name else 1
        if channels > 1:
            options["in_channels"] = channels
        try:
            network = create_model(name, n_classes=n_classes, n_bands=features.n_mels, **options)
        except ConfigError as error:  # e.g. a family configured by the checkpoint it starts from
            lines.append(f"{name:{width}s} {'-':>12s} {'-':>10s}  (not priced: {error})")
            continue
        shape = (1, channels, features.n_mels, frames)
        parameters, macs = count_parameters(network), count_macs(network, shape)
        line = f"{name:{width}s} {parameters:>12,d} {macs / 1e6:>9,.0f}M"
        if name == model.name:
            shown = ", ".join(f"{key}={value}" for key, value in options.items())
            line += f"  * {shown}" if shown else "  *"
            total = (model.ensemble * parameters, model.ensemble * macs)
        lines.append(line)
    if model.name in list_models():
        members = f"an ensemble of {model.ensemble}" if model.ensemble > 1 else "one model"
        options = " with its options" if model.kwargs else ""
        lines.append(
            f"* the {recipe} recipe's model{options}; it trains {members}: "
            f"{total[0]:,d} parameters, {total[1] / 1e6:,.0f}M MACs per clip"
        )
    return "\n".join(lines)
