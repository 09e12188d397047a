"""Tests of the model families (parametrized over the registry, timm style) and of the complexity counters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from urbansound.errors import ConfigError
from urbansound.models import create_model, list_models
from urbansound.models.backbones import find_backbone
from urbansound.models.complexity import count_macs, count_parameters

# Pretrained backbones (PANNs, EfficientAT, Hugging Face) are tested at tiny widths in test_transfer.py: CNN14
# at full width has 80 M parameters and hf_ast needs a checkpoint's configuration.
MODELS = [name for name in list_models() if find_backbone(name) is None]
N_CLASSES = 10


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_every_family_is_registered() -> None:
    assert {"cnn", "sbcnn", "resnet", "resnet18", "crnn"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(2, 1, 64, 173), (2, 1, 128, 100)])
def test_forward_shape(name: str, shape: tuple[int, int, int, int]) -> None:
    model = create_model(name, n_classes=N_CLASSES, n_bands=shape[2])
    logits = model(torch.randn(shape))
    assert logits.shape == (shape[0], N_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("frames", [1, 5, 37])
def test_any_number_of_frames(name: str, frames: int) -> None:
    # Down to a single frame: the models pool globally over time and round their poolings up.
    model = create_model(name, n_classes=N_CLASSES, n_bands=64).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 64, frames))
    assert logits.shape == (1, N_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_gradients(name: str) -> None:
    model = create_model(name, n_classes=N_CLASSES, n_bands=64)
    x = torch.randn(4, 1, 64, 50)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(loss)
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{parameter_name} has a non-finite gradient"
    assert any(parameter.grad.abs().sum() > 0 for parameter in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic_and_independent_of_batch_mates(name: str) -> None:
    model = create_model(name, n_classes=N_CLASSES, n_bands=64).eval()
    x = torch.randn(3, 1, 64, 40)
    with torch.no_grad():
        first, second = model(x), model(x)
        alone = model(x[:1])
    assert not torch.isnan(first).any()
    assert torch.equal(first, second)
    # Dropout off, BatchNorm on running statistics: a clip's logits must not depend on its batch mates.
    torch.testing.assert_close(alone, first[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_overfits_a_tiny_batch(name: str) -> None:
    # 8 random 64-band, 32-frame "clips" with 4 classes: any working model and gradient path memorises them
    # (in 5-40 steps for every family and seeds 0-5); 150 steps is the ceiling, not the budget.
    x = torch.randn(8, 1, 64, 32)
    y = torch.arange(8) % 4
    model = create_model(name, n_classes=4, n_bands=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accuracy = 0.0
    for step in range(150):
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 4:
            # Judged in eval mode (no dropout, BatchNorm on running statistics), as the model is used.
            model.eval()
            with torch.no_grad():
                accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"{name} reached train accuracy {accuracy} after {step + 1} steps"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sbcnn", {"batch_norm": True}),
        ("sbcnn", {"time_pooling": "max"}),
        ("crnn", {"rnn": "lstm"}),
        ("crnn", {"pooling": "mean", "rnn_layers": 2}),
        ("resnet", {"widths": [16, 32, 64, 128], "dropout": 0.0}),
    ],
)
def test_family_options(name: str, kwargs: dict[str, object]) -> None:
    # Lists, not tuples, as the options arrive from a JSON model file.
    model = create_model(name, n_classes=N_CLASSES, n_bands=128, **kwargs)
    assert model(torch.randn(2, 1, 128, 30)).shape == (2, N_CLASSES)


def test_sbcnn_batch_norm_option_adds_batch_norm() -> None:
    def has_batch_norm(model: nn.Module) -> bool:
        return any(isinstance(module, nn.BatchNorm2d) for module in model.modules())

    assert not has_batch_norm(create_model("sbcnn", n_classes=N_CLASSES, n_bands=64))
    assert has_batch_norm(create_model("sbcnn", n_classes=N_CLASSES, n_bands=64, batch_norm=True))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("crnn", {"rnn": "transformer"}),
        ("crnn", {"pooling": "max"}),
        ("crnn", {"channels": [32, 64], "pools": [[2, 2]]}),
        ("sbcnn", {"time_pooling": "median"}),
        ("sbcnn", {"channels": [24, 48]}),
        ("resnet", {"widths": [32, 64], "layers": [2, 2, 2]}),
    ],
)
def test_bad_family_options_raise_config_error(name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        create_model(name, n_classes=N_CLASSES, n_bands=64, **kwargs)


def test_unknown_model_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="no_such_model"):
        create_model("no_such_model", n_classes=N_CLASSES, n_bands=64)


def test_resnet18_has_the_standard_resnet18_body() -> None:
    # torchvision's resnet18 has 11,689,512 parameters; swap its 7x7 RGB stem for a 3x3 mono one and its
    # 1000-class head for a 10-class one.
    torchvision_resnet18 = 11_689_512
    expected = torchvision_resnet18 - 7 * 7 * 3 * 64 + 3 * 3 * 1 * 64 - (512 * 1000 + 1000) + (512 * 10 + 10)
    assert count_parameters(create_model("resnet18", n_classes=10, n_bands=64)) == expected


def test_resnet_stem_pools_before_its_relu_with_the_values_and_gradients_of_relu_first() -> None:
    """The stem applies its ReLU after the max-pool (a quarter of the elements); relu then pool must give the
    same activations and the same gradients, bit for bit, including odd sizes (ceil_mode edges)."""
    torch.manual_seed(0)
    model = create_model("resnet", n_classes=10, n_bands=17, widths=[4, 8, 8, 8], layers=[1, 1, 1, 1])
    conv, bn, pool, relu = model.stem
    assert isinstance(pool, nn.MaxPool2d) and isinstance(relu, nn.ReLU)
    x = torch.randn(3, 1, 17, 9)
    reference = nn.Sequential(conv, bn, nn.ReLU(), pool)
    grads = []
    for stem in (model.stem, reference):
        leaf = x.clone().requires_grad_(True)
        out = stem(leaf)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((out.detach(), leaf.grad, conv.weight.grad.clone(), bn.weight.grad.clone()))
        model.zero_grad()
    for ours, theirs in zip(*grads, strict=True):
        assert torch.equal(ours, theirs)
    assert (grads[0][0] == 0).any() and (grads[0][0] > 0).any()  # the ReLU did cut


def test_count_parameters_by_hand() -> None:
    conv = nn.Conv2d(1, 4, kernel_size=3)  # 4 * 1 * 3 * 3 weights + 4 biases = 40
    linear = nn.Linear(16, 3)  # 16 * 3 weights + 3 biases = 51
    model = nn.Sequential(conv, nn.Flatten(), linear)
    assert count_parameters(model) == 91
    linear.requires_grad_(False)
    assert count_parameters(model) == 40


def test_count_macs_conv2d_by_hand() -> None:
    # Output 6 x 8 x 9 (H = (16 + 2 - 3) // 2 + 1, W = (20 + 2 - 5) // 2 + 1), each over 2 x 3 x 5 taps.
    conv = nn.Conv2d(2, 6, kernel_size=(3, 5), stride=2, padding=1)
    assert count_macs(conv, (1, 2, 16, 20)) == 6 * 8 * 9 * 2 * 3 * 5
    # Groups: each of 8 x 10 x 10 outputs sees 4 / 2 input channels x 3 x 3 taps.
    grouped = nn.Conv2d(4, 8, kernel_size=3, padding=1, groups=2)
    assert count_macs(grouped, (1, 4, 10, 10)) == 8 * 10 * 10 * 2 * 9


def test_count_macs_conv1d_by_hand() -> None:
    conv = nn.Conv1d(3, 5, kernel_size=4)  # 5 x 7 outputs over 3 x 4 taps
    assert count_macs(conv, (1, 3, 10)) == 5 * 7 * 3 * 4


def test_count_macs_linear_by_hand() -> None:
    assert count_macs(nn.Linear(10, 5), (1, 10)) == 50
    assert count_macs(nn.Linear(10, 5), (4, 10)) == 50  # per clip, whatever the batch size
    assert count_macs(nn.Linear(10, 5), (1, 7, 10)) == 7 * 50  # applied to each of 7 frames


def test_count_macs_recurrent_by_hand() -> None:
    # GRU: 3 gates x hidden 3 x (input 4 + hidden 3) per step and direction; 5 steps, 2 directions.
    gru = nn.GRU(4, 3, batch_first=True, bidirectional=True)
    assert count_macs(gru, (1, 5, 4)) == 5 * 2 * 3 * 3 * (4 + 3)
    # LSTM, 2 layers: 4 gates x 3 x (4 + 3) in layer 1, 4 x 3 x (3 + 3) in layer 2; 5 steps.
    lstm = nn.LSTM(4, 3, num_layers=2, batch_first=True)
    assert count_macs(lstm, (1, 5, 4)) == 5 * (4 * 3 * (4 + 3) + 4 * 3 * (3 + 3))


def test_count_macs_sbcnn_by_hand() -> None:
    # (1, 1, 64, 345): convs at 64 x 345, 32 x 87, 16 x 22 (ceil-mode (2, 4) pools), then 768 -> 64 -> 10.
    expected = (
        24 * 64 * 345 * 1 * 25 + 48 * 32 * 87 * 24 * 25 + 48 * 16 * 22 * 48 * 25 + 48 * 16 * 64 + 64 * 10
    )
    assert count_macs(create_model("sbcnn", n_classes=10, n_bands=64), (1, 1, 64, 345)) == expected


def test_count_macs_leaves_the_model_as_it_was() -> None:
    model = create_model("crnn", n_classes=N_CLASSES, n_bands=64).train()
    frozen_norm = next(module for module in model.modules() if isinstance(module, nn.BatchNorm2d)).eval()
    first = count_macs(model, (1, 1, 64, 100))
    assert model.training and not frozen_norm.training
    assert count_macs(model, (1, 1, 64, 100)) == first  # no hooks left behind to count twice
    assert all(not module._forward_hooks for module in model.modules())
    # Twice the frames: everything but the fixed-size classifier and attention scoring scales with time.
    assert 1.9 * first < count_macs(model, (1, 1, 64, 200)) <= 2 * first


def test_count_macs_rejects_bad_shapes() -> None:
    with pytest.raises(ConfigError):
        count_macs(nn.Linear(3, 2), (0, 3))
