"""Self-labelling: a classifier trained on the confident part of a clustering, then used to label.

A clustering of the training codes (task 5's inductive clustering) gives each training image a cluster
and a confidence. A convolutional classifier, started from the autoencoder's encoder, is trained
on the most confident images of every cluster, each fed shifted by a few pixels, with the
clusters as classes; it then labels the unseen test images. No test image and no class label
takes part in the training. The classifier sees pixels, not the 10-d code, so it can separate
what the code squeezed together; trained on confident members only, it does not simply copy the
clustering's mistakes at the borders.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..device import synchronize
from .autoencoder import ConvAutoencoder, images_to_tensor
from .training import channels_last_bf16_on, mixed_precision, shift_images

__all__ = ["SelfLabelConfig", "confident_members", "self_label"]


@dataclass(frozen=True)
class SelfLabelConfig:
    """Settings of the self-labelling classifier."""

    keep_fraction: float = 0.5  # of each cluster, its most confident members train the classifier
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    max_shift: int = 2
    label_smoothing: float = 0.1


def confident_members(labels: torch.Tensor, confidence: torch.Tensor, n_clusters: int, keep_fraction: float):
    """Indices of the ``keep_fraction`` most confident members of every cluster (at least one each).

    Ties in confidence go to the lower index, so the choice is deterministic.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction={keep_fraction} must be in (0, 1].")
    labels, confidence = labels.cpu(), confidence.cpu().double()
    chosen = []
    for k in range(n_clusters):
        members = torch.nonzero(labels == k).flatten()
        if members.numel() == 0:
            continue
        n_keep = max(1, int(round(keep_fraction * members.numel())))
        # Stable sort on descending confidence: equal confidences keep index order.
        order = torch.sort(-confidence[members], stable=True).indices
        chosen.append(members[order[:n_keep]])
    return torch.sort(torch.cat(chosen)).values


class _Classifier(nn.Module):
    # The autoencoder's conv encoder (weights copied) and a linear layer on its flat output.
    def __init__(self, autoencoder: ConvAutoencoder, n_classes: int):
        super().__init__()
        self.trunk = copy.deepcopy(autoencoder.encoder)
        c, h, w = autoencoder._conv_shape
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(c * h * w, n_classes))

    def forward(self, x):
        return self.head(self.trunk(x))


def self_label(
    autoencoder: ConvAutoencoder,
    train_images,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    test_images,
    *,
    n_clusters: int = 10,
    config: SelfLabelConfig = SelfLabelConfig(),
    seed: int = 0,
    channels_last_bf16: bool | None = None,
):
    """Train a classifier on the confident members of each cluster; return its labels for ``test_images``.

    Parameters
    ----------
    autoencoder : ConvAutoencoder
        Trained; its encoder starts the classifier (the autoencoder itself is not changed).
    train_images : array-like of shape (n_train, 28, 28)
        The images whose codes were clustered, in the same order as ``labels``.
    labels : int tensor of shape (n_train,)
        Their clusters.
    confidence : tensor of shape (n_train,)
        How sure the clustering is of each (for example the mixture's posterior of its cluster).
    test_images : array-like of shape (n_test, 28, 28)
    n_clusters : int
    config : SelfLabelConfig
    seed : int
    channels_last_bf16 : bool, optional
        Train and label in bf16 autocast with a channels_last model (the CUDA path). None (default):
        on CUDA only; True runs that path on the CPU too (the tests do).

    Returns
    -------
    labels : int64 tensor of shape (n_test,), on the autoencoder's device
    info : dict
        ``n_trained_on`` (confident images used), ``seconds``.
    """
    device = next(autoencoder.parameters()).device
    if len(labels) != len(train_images) or len(confidence) != len(train_images):
        raise ValueError(
            f"labels ({len(labels)}) and confidence ({len(confidence)}) must have one entry per training image "
            f"({len(train_images)})."
        )
    _check(config)
    labels = torch.as_tensor(labels).cpu()
    if labels.numel() and not bool(((labels >= 0) & (labels < n_clusters)).all()):
        raise ValueError(f"labels must lie in [0, {n_clusters}) for n_clusters={n_clusters}.")
    # The caller's random state is left as it was: the classifier draws from its own.
    devices = [device] if device.type == "cuda" else []
    bf16 = channels_last_bf16_on(device, channels_last_bf16)
    with torch.random.fork_rng(devices=devices):
        return _train_and_label(
            autoencoder, device, bf16, train_images, labels, confidence, test_images, n_clusters, config, seed
        )


def _check(config):
    for name, value, low, high in (
        ("epochs", config.epochs, 1, None),
        ("batch_size", config.batch_size, 1, None),
        ("max_shift", config.max_shift, 0, 8),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise ValueError(f"{name}={value!r} must be an integer in [{low}, {high or 'inf'}].")
    if not (config.lr > 0 and 0.0 <= config.label_smoothing < 1.0):
        raise ValueError(f"lr={config.lr} must be positive and label_smoothing={config.label_smoothing} in [0, 1).")


def _train_and_label(
    autoencoder, device, bf16, train_images, labels, confidence, test_images, n_clusters, config, seed
):
    synchronize(device)
    t0 = time.perf_counter()
    keep = confident_members(labels, confidence, n_clusters, config.keep_fraction)
    x = images_to_tensor(np.asarray(train_images)[keep.numpy()], device)
    y = labels[keep].to(device)
    torch.manual_seed(seed)
    model = _Classifier(autoencoder, n_clusters).to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed + 104_729)
    steps = config.epochs * ((n + config.batch_size - 1) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=g).to(device)
        shifts = torch.randint(-config.max_shift, config.max_shift + 1, (n, 2), generator=g).to(device)
        for start in range(0, n, config.batch_size):
            rows = order[start : start + config.batch_size]
            inputs = shift_images(x[rows], shifts[rows], config.max_shift)
            with mixed_precision(device, bf16):
                loss = loss_fn(model(inputs).float(), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    test = images_to_tensor(test_images, device)
    out = torch.empty(test.shape[0], dtype=torch.long, device=device)
    with torch.inference_mode(), mixed_precision(device, bf16):
        for start in range(0, test.shape[0], 2048):
            out[start : start + 2048] = model(test[start : start + 2048]).argmax(1)
    synchronize(device)
    return out, {"n_trained_on": int(n), "seconds": time.perf_counter() - t0}
