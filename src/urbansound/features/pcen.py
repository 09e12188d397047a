"""Per-channel energy normalisation (PCEN) as the model's compression stage, in place of dB.

PCEN (Wang et al., ICASSP 2017; analysed for outdoor sounds by Lostanlen et al., IEEE SPL 2019, "Per-channel
energy normalization: why and how") divides each band's energy by a smoothed version of itself (an automatic
gain control per band) and then compresses with a root:

    M[t] = (1 - s) M[t - 1] + s E[t],   M[0] = E[0]
    PCEN[t] = (E[t] / (eps + M[t])^alpha + delta)^r - delta^r

so a stationary background (traffic, air conditioning) whose level varies from recording to recording is
pulled towards a constant, and onsets stand out. The feature cache holds dB band energies; this stage turns
them back into magnitudes ``10^(dB / 20)`` (the cache's top-dB floor is 80 dB down, far below what PCEN's
``eps`` resolves) and scales them by ``2^31`` as librosa's documentation does for magnitudes of float audio.
It sits in the model's normaliser, so the cache is shared with dB models, and the per-band standardisation
that follows uses statistics measured after PCEN on the training clips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from urbansound.errors import DataError
from urbansound.features.frontend import BandNormalizer, relative_to_clip_max

# librosa.pcen's defaults (after Lostanlen et al. 2019): 0.4 s smoother, gain 0.98, bias 2, power 0.5.
TIME_CONSTANT_S = 0.4
GAIN = 0.98
BIAS = 2.0
POWER = 0.5
EPS = 1e-6
# librosa's documentation scales magnitudes of audio in [-1, 1] by 2^31 (the int32 range) before PCEN.
INPUT_SCALE = 2.0**31


def smoothing_coefficient(time_constant_s: float, frames_per_second: float) -> float:
    """librosa's ``s`` for a smoother with time constant ``time_constant_s`` at ``frames_per_second``."""
    t_frames = time_constant_s * frames_per_second
    return (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)


def pcen(
    energy: torch.Tensor,
    s: torch.Tensor | float,
    alpha: torch.Tensor | float = GAIN,
    delta: torch.Tensor | float = BIAS,
    r: torch.Tensor | float = POWER,
    eps: float = EPS,
) -> torch.Tensor:
    """PCEN of non-negative energies ``(batch, n_bands, frames)``; parameters are scalars or ``(n_bands,)``.

    The smoother runs frame by frame (a first-order IIR filter, started at the first frame's value).
    """
    s, alpha, delta, r = (_per_band(p, energy) for p in (s, alpha, delta, r))
    smoothed = [energy[..., 0]]
    for t in range(1, energy.shape[-1]):
        smoothed.append((1 - s[..., 0]) * smoothed[-1] + s[..., 0] * energy[..., t])
    m = torch.stack(smoothed, dim=-1)  # (batch, n_bands, frames)
    return (energy / (eps + m) ** alpha + delta) ** r - delta**r


def _per_band(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``(n_bands,)`` parameter shaped ``(n_bands, 1)`` (or ``()``) to broadcast over frames."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return tensor[:, None] if tensor.dim() == 1 else tensor.reshape(1, 1)


class PCEN(nn.Module):
    """PCEN of magnitudes ``(batch, n_bands, frames)`` with librosa's default parameters, per band.

    ``learnable``: the four parameters are trained (through their logarithms, so they stay positive), as in
    Wang et al.'s trainable PCEN; otherwise they are fixed buffers. Either way they are stored in the model
    file.
    """

    def __init__(self, n_bands: int, frames_per_second: float, learnable: bool = False) -> None:
        super().__init__()
        s = smoothing_coefficient(TIME_CONSTANT_S, frames_per_second)
        initial = {"log_s": s, "log_alpha": GAIN, "log_delta": BIAS, "log_r": POWER}
        for name, value in initial.items():
            tensor = torch.full((n_bands,), math.log(value))
            if learnable:
                self.register_parameter(name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)
        self.learnable = learnable

    def forward(self, energy: torch.Tensor) -> torch.Tensor:
        # energy: (batch, n_bands, frames) magnitudes
        s = self.log_s.exp().clamp_max(1.0)
        return pcen(energy, s, self.log_alpha.exp(), self.log_delta.exp(), self.log_r.exp())

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}"


def db_to_scaled_magnitude(features: torch.Tensor) -> torch.Tensor:
    """Cached dB band energies -> magnitudes ``10^(dB / 20)`` scaled as librosa advises for PCEN."""
    return torch.pow(10.0, features / 20.0) * INPUT_SCALE


class PCENNormalizer(BandNormalizer):
    """:class:`BandNormalizer` with PCEN in place of dB: dB features (re the clip's maximum with
    ``db_reference="clip_max"``) -> magnitudes -> PCEN -> standardised per band with training statistics.

    State-dict keys: ``mean``, ``std`` and the PCEN parameters (``pcen.log_s``, ...).
    """

    def __init__(
        self, n_bands: int, frames_per_second: float, db_reference: str = "absolute", learnable: bool = False
    ) -> None:
        super().__init__(n_bands, db_reference)
        self.pcen = PCEN(n_bands, frames_per_second, learnable)

    def compress(self, features: torch.Tensor) -> torch.Tensor:
        """PCEN of dB features ``(batch, n_bands, frames)``, before standardisation."""
        if self.db_reference == "clip_max":
            features = relative_to_clip_max(features)
        return self.pcen(db_to_scaled_magnitude(features.float()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: (batch, n_bands, frames) dB -> standardised PCEN, same shape
        return (self.compress(features) - self.mean[:, None]) / self.std[:, None]


@torch.no_grad()
def pcen_band_statistics(
    normalizer: PCENNormalizer, features: np.ndarray, indices: Sequence[int], chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of ``normalizer``'s PCEN output over the clips ``indices`` (float32 arrays of
    shape ``(n_bands,)``), accumulated in float64 a chunk at a time so a memory map is never read whole."""
    indices = np.sort(np.asarray(indices))
    if len(indices) == 0:
        raise DataError("no training clips to compute normalisation statistics from")
    total = torch.zeros(features.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for start in range(0, len(indices), chunk):
        block = torch.from_numpy(np.asarray(features[indices[start : start + chunk]], dtype=np.float32))
        out = normalizer.compress(block).double()  # (clips, n_bands, frames)
        total += out.sum(dim=(0, 2))
        total_sq += out.square().sum(dim=(0, 2))
        count += out.shape[0] * out.shape[2]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt()
    return mean.float().numpy(), std.float().numpy()
