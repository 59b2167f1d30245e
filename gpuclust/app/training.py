"""Train a :class:`~gpuclust.autoencoder.ConvAutoencoder`, checkpoint it, and encode images with it."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..device import resolve_device, synchronize
from ._atomic import atomic_write
from .autoencoder import AutoencoderConfig, ConvAutoencoder, images_to_tensor

logger = logging.getLogger("gpuclust")


@dataclass
class TrainingHistory:
    """Per-epoch losses and speed, kept for the loss-curve plot and the report."""

    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    images_per_second: list = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    def to_dict(self):
        return dict(self.__dict__)


def _epoch_order(n, seed, epoch, device):
    # Each epoch's shuffle depends only on (seed, epoch): a resumed run sees the same batches.
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _evaluate(model, data, batch_size, device, loss_fn):
    model.eval()
    total = 0.0
    with torch.inference_mode(), _autocast(device):
        for start in range(0, data.shape[0], batch_size):
            batch = data[start : start + batch_size]
            total += float(loss_fn(model(batch).float(), batch)) * batch.shape[0]
    return total / data.shape[0]


def _save_checkpoint(path, model, optimizer, epoch, history, config, best_state, patience_left):
    payload = {
        "format": "gpuclust-autoencoder-1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": history.to_dict(),
        "config": config,
        "best_state": best_state,
        "patience_left": patience_left,
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint written by :func:`train_autoencoder` and rebuild its model.

    Returns
    -------
    model : ConvAutoencoder (best weights, eval mode)
    checkpoint : dict
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=resolve_device(device), weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable gpuclust checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != "gpuclust-autoencoder-1":
        raise ValueError(f"{path} is not a gpuclust autoencoder checkpoint.")
    arch = ckpt["config"]["architecture"]
    model = ConvAutoencoder(ckpt["config"]["preset"], AutoencoderConfig.from_dict(arch))
    model.load_state_dict(ckpt["best_state"] or ckpt["model"])
    return model.to(resolve_device(device)).eval(), ckpt


def train_autoencoder(
    train_images,
    val_images,
    *,
    preset="seed",
    epochs=200,
    batch_size=480,
    lr=1e-3,
    patience=10,
    seed=0,
    device="auto",
    checkpoint=None,
    resume=False,
    progress=True,
    max_seconds=None,
):
    """Train with Adam on mean squared reconstruction error, with early stopping on validation loss.

    Parameters
    ----------
    train_images, val_images : array-like of images
        uint8 0-255 or float [0, 1], shape (n, 28, 28) or (n, 1, 28, 28).
    preset : str
        Architecture, a key of :data:`gpuclust.autoencoder.PRESETS`.
    epochs : int
        Upper limit; training stops after ``patience`` epochs without a better validation loss.
    batch_size, lr, patience, seed : training settings
    device : str
        On CUDA the whole data set stays on the GPU (no host copy per batch), with
        bf16 autocast and channels_last.
    checkpoint : path, optional
        Saved atomically after every epoch (model, optimizer, epoch, losses, config).
    resume : bool
        Continue from ``checkpoint`` if it exists; the result equals an uninterrupted run.
    progress : bool
        Show a progress bar with losses and images per second.
    max_seconds : float, optional
        Stop after the epoch during which this much training time has passed (CPU quick profiles).

    Returns
    -------
    model : ConvAutoencoder
        With the weights of the best validation epoch, in eval mode.
    history : TrainingHistory
    """
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 1 or patience < 1:
        raise ValueError("epochs, batch_size and patience must be positive integers.")
    device = resolve_device(device)
    train = images_to_tensor(train_images, device)
    val = images_to_tensor(val_images, device)
    torch.manual_seed(seed)
    model = ConvAutoencoder(preset).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        train, val = (
            train.contiguous(memory_format=torch.channels_last),
            val.contiguous(memory_format=torch.channels_last),
        )
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    config = {
        "preset": preset,
        "architecture": model.config.to_dict(),
        "batch_size": batch_size,
        "lr": lr,
        "patience": patience,
        "seed": seed,
        "epochs": epochs,
        "loss": "mse",
    }
    history, start_epoch, best_state, patience_left = TrainingHistory(), 0, None, patience
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        _, ckpt = load_checkpoint(checkpoint, device)
        if ckpt["config"]["architecture"] != config["architecture"]:
            raise ValueError(
                f"checkpoint {checkpoint} is for architecture {ckpt['config']['architecture']} "
                f"(preset {ckpt['config']['preset']!r}), not {config['architecture']} ({preset!r})."
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history = TrainingHistory(**ckpt["history"])
        start_epoch, best_state, patience_left = ckpt["epoch"], ckpt["best_state"], ckpt["patience_left"]
        logger.info("resumed from %s at epoch %d", checkpoint, start_epoch)
    n = train.shape[0]
    bar = tqdm(
        range(start_epoch, epochs),
        initial=start_epoch,
        total=epochs,
        unit="epoch",
        disable=not progress,
        desc=f"autoencoder[{preset}] on {device.type}",
    )
    began = time.perf_counter()
    for epoch in bar:
        if patience_left <= 0:
            break
        model.train()
        order = _epoch_order(n, seed, epoch, device)
        synchronize(device)
        t0 = time.perf_counter()
        running = torch.zeros((), device=device)
        for start in range(0, n, batch_size):
            batch = train[order[start : start + batch_size]]
            with _autocast(device):
                loss = loss_fn(model(batch).float(), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach() * batch.shape[0]
        synchronize(device)
        seconds = time.perf_counter() - t0
        history.train_loss.append(float(running) / n)
        history.val_loss.append(_evaluate(model, val, batch_size, device, loss_fn))
        history.images_per_second.append(n / seconds)
        if history.val_loss[-1] < min(history.val_loss[:-1], default=math.inf):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.best_epoch = epoch + 1
            patience_left = patience
        else:
            patience_left -= 1
        bar.set_postfix(
            train=f"{history.train_loss[-1]:.5f}",
            val=f"{history.val_loss[-1]:.5f}",
            img_s=f"{history.images_per_second[-1]:.0f}",
        )
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, epoch + 1, history, config, best_state, patience_left)
        if patience_left <= 0:
            history.stopped_early = True
            logger.info("early stop after epoch %d (best %d)", epoch + 1, history.best_epoch)
            break
        if max_seconds is not None and time.perf_counter() - began > max_seconds:
            logger.info("stopping after epoch %d: time limit of %.0f s reached", epoch + 1, max_seconds)
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.to(memory_format=torch.contiguous_format).eval(), history


def encode(model: ConvAutoencoder, images, *, batch_size=2048, device=None) -> torch.Tensor:
    """Latent features of ``images``, computed in batches under inference mode.

    Returns a tensor on the model's device (no host copy), ready for gpuclust's
    estimators, or for CuPy/cuML through DLPack.
    """
    device = next(model.parameters()).device if device is None else resolve_device(device)
    data = images_to_tensor(images, device)
    model.eval()
    out = torch.empty(data.shape[0], model.latent_dim, device=device)
    with torch.inference_mode(), _autocast(device):
        for start in range(0, data.shape[0], batch_size):
            out[start : start + batch_size] = model.encode(data[start : start + batch_size]).float()
    return out
