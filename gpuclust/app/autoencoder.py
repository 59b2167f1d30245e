"""Convolutional autoencoders for Fashion-MNIST features: the seed report's, and one built for clustering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_PRESET", "PRESETS", "AutoencoderConfig", "ConvAutoencoder", "count_parameters", "images_to_tensor"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of a :class:`ConvAutoencoder`.

    channels : encoder conv widths; a 2x max-pool follows every conv but the last.
    bottleneck : size of a dense code after the conv encoder, or None to use the
        flattened conv output (7 x 7 x channels[-1]) as the latent.
    """

    channels: tuple = (32, 64, 128)
    bottleneck: int | None = None

    def to_dict(self):
        return {"channels": list(self.channels), "bottleneck": self.bottleneck}

    @classmethod
    def from_dict(cls, d):
        return cls(tuple(d["channels"]), d["bottleneck"])


# What `gpuclust run` trains unless told otherwise.
DEFAULT_PRESET = "dense10"

PRESETS = {
    # The seed report's final architecture (its Figure 5): 185,857 trainable parameters
    # plus 640 batch-norm running statistics, latent 7x7x128 = 6272.
    "seed": AutoencoderConfig((32, 64, 128), None),
    # The seed's conv encoder with a 10-d dense code: clusters far better (README, benchmarks/results).
    "dense10": AutoencoderConfig((32, 64, 128), 10),
    "dense32": AutoencoderConfig((32, 64, 128), 32),
}


def _conv_bn_relu(c_in, c_out):
    # Keras' batch-norm defaults (eps 1e-3, momentum 0.99), as in the seed.
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]


class ConvAutoencoder(nn.Module):
    """Conv encoder (3x3 "same" convs, batch norm, ReLU, 2x max-pool) and a mirrored decoder.

    Parameters
    ----------
    preset : str, default="seed"
        A key of :data:`PRESETS`.
    config : AutoencoderConfig, optional
        Overrides ``preset``.

    Notes
    -----
    ``encode`` returns flat features of shape (n, latent_dim); ``decode`` takes them back.
    Input images are (n, 1, 28, 28) floats in [0, 1].
    """

    def __init__(self, preset: str = "seed", config: AutoencoderConfig | None = None):
        super().__init__()
        if config is None:
            if preset not in PRESETS:
                raise ValueError(f"preset={preset!r} is not one of {sorted(PRESETS)}.")
            config = PRESETS[preset]
        self.preset = preset if config == PRESETS.get(preset) else "custom"
        self.config = config
        c = config.channels
        enc = []
        for i, (c_in, c_out) in enumerate(zip((1,) + tuple(c[:-1]), c)):
            enc += _conv_bn_relu(c_in, c_out)
            if i < len(c) - 1:
                enc.append(nn.MaxPool2d(2))
        self.encoder = nn.Sequential(*enc)
        side = 28 // 2 ** (len(c) - 1)
        self._conv_shape = (c[-1], side, side)
        conv_dim = c[-1] * side * side
        self.to_code = nn.Linear(conv_dim, config.bottleneck) if config.bottleneck else None
        self.from_code = (
            nn.Sequential(nn.Linear(config.bottleneck, conv_dim), nn.ReLU(inplace=True)) if config.bottleneck else None
        )
        dec = []
        rev = tuple(reversed(c))
        for c_in, c_out in zip(rev[:-1], rev[1:]):
            dec += _conv_bn_relu(c_in, c_out)
            dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
        dec += [nn.Conv2d(c[0], 1, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)
        self.latent_dim = config.bottleneck or conv_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (n, 1, 28, 28) -> flat latent features (n, latent_dim)."""
        h = self.encoder(x).flatten(1)
        return self.to_code(h) if self.to_code is not None else h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent features (n, latent_dim) -> reconstructed images (n, 1, 28, 28)."""
        if self.from_code is not None:
            z = self.from_code(z)
        return self.decoder(z.reshape(z.shape[0], *self._conv_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def count_parameters(model: nn.Module):
    """(trainable parameters, batch-norm running statistics) as Keras counts them."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable, running


def images_to_tensor(images, device=None) -> torch.Tensor:
    """Validate images and return a float32 (n, 1, 28, 28) tensor in [0, 1] on ``device``.

    Accepts uint8 in 0-255 (scaled by 1/255) or floats already in [0, 1]; shapes
    (n, 28, 28), (n, 1, 28, 28) or flat (n, 784).
    """
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if t.ndim == 2 and t.shape[1] == 784:
        t = t.reshape(-1, 28, 28)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4 or tuple(t.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must be (n, 28, 28), (n, 1, 28, 28) or (n, 784); got shape {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise ValueError("images is empty.")
    if t.dtype == torch.uint8:
        t = t.to(device=device).to(torch.float32).div_(255.0)
    elif t.is_floating_point():
        t = t.to(device=device, dtype=torch.float32)
        lo, hi = torch.aminmax(t)
        if not (float(lo) >= 0.0 and float(hi) <= 1.0):
            raise ValueError(
                f"float images must lie in [0, 1]; got values in [{float(lo):.3g}, {float(hi):.3g}] "
                "(pass uint8 0-255 images, or divide by 255)."
            )
    else:
        raise ValueError(f"images must be uint8 (0-255) or float in [0, 1]; got dtype {t.dtype}.")
    return t
