"""Train a :class:`~gpuclust.autoencoder.ConvAutoencoder`, checkpoint it, and encode images with it."""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..device import resolve_device, synchronize
from ._atomic import atomic_write
from ._torch_load import load_plain, why_refused
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


def _epoch_shifts(n, max_shift, seed, epoch):
    # Each image's offsets in an epoch depend only on (seed, epoch), like the shuffle: resumable.
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=g)


def shift_images(batch: torch.Tensor, shifts: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image of ``batch`` (n, 1, h, w) by its own ``shifts`` row (dy, dx), filling with zeros.

    ``max_shift`` bounds ``|shifts|`` (passed, not read from the tensor: no device sync per batch).
    """
    n, _, h, w = batch.shape
    s = max_shift
    if s == 0:
        return batch
    padded = nn.functional.pad(batch, (s, s, s, s))
    shifts = shifts.to(batch.device)
    rows = torch.arange(h, device=batch.device) + s - shifts[:, :1]  # (n, h)
    cols = torch.arange(w, device=batch.device) + s - shifts[:, 1:]  # (n, w)
    b = torch.arange(n, device=batch.device)[:, None, None]
    return padded[b, 0, rows[:, :, None], cols[:, None, :]][:, None].contiguous()


def channels_last_bf16_on(device: torch.device, requested: bool | None = None) -> bool:
    """Whether to run the CUDA path (bf16 autocast, channels_last): ``requested``, or on CUDA when None.

    Decided once per call from its arguments: True runs the same path on the CPU (what the tests do).
    """
    return device.type == "cuda" if requested is None else bool(requested)


def mixed_precision(device, enabled: bool | None = None):
    """bf16 autocast on ``device`` when ``enabled`` (None: on CUDA only); otherwise a no-op context."""
    on = channels_last_bf16_on(device, enabled)
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else nullcontext()


def _evaluate(model, data, batch_size, device, loss_fn, bf16):
    model.eval()
    total = 0.0
    with torch.inference_mode(), mixed_precision(device, bf16):
        for start in range(0, data.shape[0], batch_size):
            batch = data[start : start + batch_size]
            total += float(loss_fn(model(batch).float(), batch)) * batch.shape[0]
    return total / data.shape[0]


def _save_checkpoint(path, model, optimizer, epoch, history, config, best_state, patience_left):
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": history.to_dict(),
        "config": config,
        "best_state": best_state,
        "patience_left": patience_left,
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))


CHECKPOINT_FORMAT = "gpuclust-autoencoder-1"

# What a checkpoint holds: tensors and plain containers only, so it loads with weights_only=True.
_CHECKPOINT_FIELDS = {
    "format": str,
    "model": dict,
    "optimizer": dict,
    "epoch": int,
    "history": dict,
    "config": dict,
    "best_state": (dict, type(None)),
    "patience_left": int,
}
_HISTORY_FIELDS = {
    "train_loss": list,
    "val_loss": list,
    "images_per_second": list,
    "best_epoch": int,
    "stopped_early": bool,
}
# Settings a resumed run must share with the checkpoint (the architecture always).
RESUME_SETTINGS = ("preset", "seed", "batch_size", "lr", "data", "augment_shift")
RESUME_DEFAULTS = {"augment_shift": 0}  # settings added later, and what older checkpoints trained with


def _type_names(types):
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def _check_fields(obj, fields, where):
    missing = [k for k in fields if k not in obj]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}.")
    for key, types in fields.items():
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types is int):
            raise ValueError(f"{where}: {key!r} is a {type(value).__name__}, expected {_type_names(types)}.")


def _check_state_dict(state, where):
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{where}: entry {bad[0]!r} is not a named tensor.")


def _validate_checkpoint(ckpt, path):
    """Raise ValueError naming what is wrong with the structure of a loaded checkpoint."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a gpuclust autoencoder checkpoint (no format {CHECKPOINT_FORMAT!r}).")
    _check_fields(ckpt, _CHECKPOINT_FIELDS, f"checkpoint {path}")
    _check_fields(ckpt["history"], _HISTORY_FIELDS, f"checkpoint {path}: history")
    extra = sorted(set(ckpt["history"]) - set(_HISTORY_FIELDS))
    if extra:
        raise ValueError(f"checkpoint {path}: history has unknown field(s) {', '.join(extra)}.")
    _check_fields(ckpt["config"], {"preset": str, "architecture": dict}, f"checkpoint {path}: config")
    arch = ckpt["config"]["architecture"]
    _check_fields(arch, {"channels": list, "bottleneck": (int, type(None))}, f"checkpoint {path}: architecture")
    if not arch["channels"] or not all(isinstance(c, int) and c > 0 for c in arch["channels"]):
        raise ValueError(f"checkpoint {path}: architecture channels {arch['channels']} are not positive integers.")
    epoch, history = ckpt["epoch"], ckpt["history"]
    if epoch < 0 or not len(history["train_loss"]) == len(history["val_loss"]) == epoch:
        raise ValueError(
            f"checkpoint {path}: epoch {epoch} but {len(history['train_loss'])} training and "
            f"{len(history['val_loss'])} validation losses."
        )
    _check_state_dict(ckpt["model"], f"checkpoint {path}: model")
    if ckpt["best_state"] is not None:
        _check_state_dict(ckpt["best_state"], f"checkpoint {path}: best_state")


def _load_weights(model, state, path, what):
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ValueError(f"checkpoint {path}: {what} do not fit its architecture ({first})") from None


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint written by :func:`train_autoencoder` and rebuild its model.

    Loaded with ``weights_only=True``: tensors and plain containers only, so a file
    that carries pickled code is refused without running it.

    Returns
    -------
    model : ConvAutoencoder (best weights, eval mode)
    checkpoint : dict

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a checkpoint, holds anything but tensors and plain data,
        or its structure is wrong; the message names the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    device = resolve_device(device)
    try:
        ckpt = load_plain(path, map_location=device)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable gpuclust checkpoint ({why_refused(exc)})") from None
    _validate_checkpoint(ckpt, path)
    try:
        config = AutoencoderConfig.from_dict(ckpt["config"]["architecture"])
        model = ConvAutoencoder(ckpt["config"]["preset"], config)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"checkpoint {path}: its architecture cannot be built ({exc})") from None
    _load_weights(model, ckpt["model"], path, "the model weights")
    if ckpt["best_state"] is not None:
        _load_weights(model, ckpt["best_state"], path, "the best-epoch weights")
    return model.to(device).eval(), ckpt


def data_fingerprint(train, val) -> dict:
    """Sizes and a sha256 of the training and validation tensors: what a resumed run must match."""
    digest = hashlib.sha256()
    for t in (train, val):
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.detach().contiguous().cpu().numpy().tobytes())
    return {"n_train": int(train.shape[0]), "n_val": int(val.shape[0]), "sha256": digest.hexdigest()}


def _describe(key, value):
    if key == "data" and isinstance(value, dict):
        digest = str(value.get("sha256"))[:12]
        return f"{value.get('n_train')} training / {value.get('n_val')} validation images (sha256 {digest})"
    return repr(value)


def resume_differences(saved: dict, config: dict) -> list[str]:
    """The settings in :data:`RESUME_SETTINGS` where a checkpoint's config and this run's differ, described."""
    saved = {**RESUME_DEFAULTS, **saved}  # a checkpoint from before a setting existed had its default
    return [
        f"{key} {_describe(key, saved.get(key))} in the checkpoint, {_describe(key, config[key])} now"
        for key in RESUME_SETTINGS
        if key in saved and saved[key] != config[key]
    ]


def train_autoencoder(train_images, val_images, *, preset="seed", epochs=200, batch_size=480, lr=1e-3, patience=10,
                      seed=0, device="auto", checkpoint=None, resume=False, progress=True, max_seconds=None,
                      allow_changed_settings=False, augment_shift=0, channels_last_bf16=None):  # fmt: skip
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
        On CUDA the whole data set stays on the GPU (no host copy per batch).
    checkpoint : path, optional
        Saved atomically after every epoch (model, optimizer, epoch, losses, config).
    resume : bool
        Continue from ``checkpoint`` if it exists; the result equals an uninterrupted run.
        Refused (ValueError naming the differences) when the checkpoint was trained with
        another preset, seed, batch size, learning rate or data.
    progress : bool
        Show a progress bar with losses and images per second.
    max_seconds : float, optional
        Stop after the epoch during which this much training time has passed (CPU quick profiles).
    allow_changed_settings : bool, default=False
        Resume even when those settings differ (the run continues with the new ones).
    augment_shift : int, default=0
        Each training image is fed shifted by up to this many pixels in each direction (its own
        random offsets every epoch, zeros filling in) and the loss compares the output with the
        unshifted image: the code must describe the garment, not where it sits. 0: no shift.
    channels_last_bf16 : bool, optional
        Train in bf16 autocast with channels_last tensors and deterministic cuDNN (the CUDA path).
        None (default): on CUDA only; True runs that path on the CPU too (the tests do).

    Returns
    -------
    model : ConvAutoencoder
        With the weights of the best validation epoch, in eval mode.
    history : TrainingHistory
    """
    from tqdm.auto import tqdm

    _check_training_settings(epochs, batch_size, lr, patience, augment_shift)
    device = resolve_device(device)
    run = _start_training(train_images, val_images, device, channels_last_bf16_on(device, channels_last_bf16),
                          preset=preset, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                          augment_shift=augment_shift)  # fmt: skip
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        _resume_from(run, checkpoint, allow_changed_settings)
    _run_epochs(run, tqdm, checkpoint, progress, max_seconds)
    if run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    return run.model.to(memory_format=torch.contiguous_format).eval(), run.history


def _check_training_settings(epochs, batch_size, lr, patience, augment_shift):
    if (
        isinstance(augment_shift, bool)
        or not isinstance(augment_shift, numbers.Integral)
        or not 0 <= augment_shift <= 8
    ):
        raise ValueError(f"augment_shift={augment_shift!r} must be an integer in [0, 8].")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a positive finite number.")


@dataclass
class _Training:
    """One training run's state: what the epochs change, and what a checkpoint records."""

    model: ConvAutoencoder
    optimizer: torch.optim.Optimizer
    train: torch.Tensor
    val: torch.Tensor
    device: torch.device
    bf16: bool  # bf16 autocast (with channels_last): the CUDA path
    config: dict  # the settings a checkpoint records (and a resumed run must share)
    history: TrainingHistory = field(default_factory=TrainingHistory)
    start_epoch: int = 0
    best_state: dict | None = None
    patience_left: int = 0
    loss_fn: nn.Module = field(default_factory=nn.MSELoss)


def _start_training(train_images, val_images, device, bf16, *, preset, epochs, batch_size, lr, patience, seed,
                    augment_shift) -> _Training:  # fmt: skip
    """The data on ``device``, a fresh seeded model and its optimizer, and the run's settings."""
    train = images_to_tensor(train_images, device)
    val = images_to_tensor(val_images, device)
    fingerprint = data_fingerprint(train, val)
    torch.manual_seed(seed)
    model = ConvAutoencoder(preset).to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        train, val = (
            train.contiguous(memory_format=torch.channels_last),
            val.contiguous(memory_format=torch.channels_last),
        )
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    config = {
        "preset": preset,
        "architecture": model.config.to_dict(),
        "batch_size": batch_size,
        "lr": lr,
        "patience": patience,
        "seed": seed,
        "epochs": epochs,
        "loss": "mse",
        "augment_shift": augment_shift,
        "data": fingerprint,
    }
    return _Training(model, optimizer, train, val, device, bf16, config, patience_left=patience)


def _resume_from(run: _Training, checkpoint, allow_changed_settings):
    """Continue ``run`` from ``checkpoint``: refused when its architecture, or its settings unless allowed, differ."""
    config = run.config
    _, ckpt = load_checkpoint(checkpoint, run.device)
    if ckpt["config"]["architecture"] != config["architecture"]:
        raise ValueError(
            f"checkpoint {checkpoint} is for architecture {ckpt['config']['architecture']} "
            f"(preset {ckpt['config']['preset']!r}), not {config['architecture']} ({config['preset']!r})."
        )
    differs = resume_differences(ckpt["config"], config)
    if differs and not allow_changed_settings:
        raise ValueError(
            f"cannot resume from {checkpoint}: {'; '.join(differs)} (start a new checkpoint, or allow "
            "the change explicitly with allow_changed_settings=True / --allow-changed-settings)."
        )
    if differs:
        logger.warning("resuming %s with changed settings: %s", checkpoint, "; ".join(differs))
    run.model.load_state_dict(ckpt["model"])
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"checkpoint {checkpoint}: the optimizer state does not fit the model ({exc})") from None
    run.history = TrainingHistory(**ckpt["history"])
    run.start_epoch, run.best_state, run.patience_left = ckpt["epoch"], ckpt["best_state"], ckpt["patience_left"]
    logger.info("resumed from %s at epoch %d", checkpoint, run.start_epoch)


def _run_epochs(run: _Training, tqdm, checkpoint, progress, max_seconds):
    """Epochs from ``run.start_epoch`` until early stopping, the epoch limit or ``max_seconds`` (``tqdm``: the bar)."""
    history, epochs = run.history, run.config["epochs"]
    bar = tqdm(
        range(run.start_epoch, epochs),
        initial=run.start_epoch,
        total=epochs,
        unit="epoch",
        disable=not progress,
        desc=f"autoencoder[{run.config['preset']}] on {run.device.type}",
    )
    began = time.perf_counter()
    for epoch in bar:
        if run.patience_left <= 0:
            break
        _train_epoch(run, epoch)
        bar.set_postfix(
            train=f"{history.train_loss[-1]:.5f}",
            val=f"{history.val_loss[-1]:.5f}",
            img_s=f"{history.images_per_second[-1]:.0f}",
        )
        if checkpoint is not None:
            _save_checkpoint(checkpoint, run.model, run.optimizer, epoch + 1, history, run.config, run.best_state,
                             run.patience_left)  # fmt: skip
        if run.patience_left <= 0:
            history.stopped_early = True
            logger.info("early stop after epoch %d (best %d)", epoch + 1, history.best_epoch)
            break
        if max_seconds is not None and time.perf_counter() - began > max_seconds:
            logger.info("stopping after epoch %d: time limit of %.0f s reached", epoch + 1, max_seconds)
            break
    bar.close()


def _train_epoch(run: _Training, epoch):
    """One pass over the training set, then its losses and speed in the history and early stopping's count."""
    model, train, device, history = run.model, run.train, run.device, run.history
    seed, batch_size, shift = run.config["seed"], run.config["batch_size"], run.config["augment_shift"]
    n = train.shape[0]
    model.train()
    order = _epoch_order(n, seed, epoch, device)
    synchronize(device)
    t0 = time.perf_counter()
    running = torch.zeros((), device=device)
    shifts = _epoch_shifts(n, shift, seed, epoch).to(device) if shift else None
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        batch = train[rows]
        inputs = batch if shifts is None else shift_images(batch, shifts[rows], shift)
        with mixed_precision(device, run.bf16):
            loss = run.loss_fn(model(inputs).float(), batch)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        running += loss.detach() * batch.shape[0]
    synchronize(device)
    seconds = time.perf_counter() - t0
    history.train_loss.append(float(running) / n)
    history.val_loss.append(_evaluate(model, run.val, batch_size, device, run.loss_fn, run.bf16))
    history.images_per_second.append(n / seconds)
    if history.val_loss[-1] < min(history.val_loss[:-1], default=math.inf):
        run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.best_epoch = epoch + 1
        run.patience_left = run.config["patience"]
    else:
        run.patience_left -= 1


def encode(model: ConvAutoencoder, images, *, batch_size=2048, device=None, bf16=None) -> torch.Tensor:
    """Latent features of ``images``, computed in batches under inference mode.

    ``bf16``: encode under bf16 autocast; None (default) on CUDA only, True on the CPU too.
    Returns a tensor on the model's device (no host copy), ready for gpuclust's
    estimators, or for CuPy/cuML through DLPack.
    """
    device = next(model.parameters()).device if device is None else resolve_device(device)
    data = images_to_tensor(images, device)
    model.eval()
    out = torch.empty(data.shape[0], model.latent_dim, device=device)
    with torch.inference_mode(), mixed_precision(device, bf16):
        for start in range(0, data.shape[0], batch_size):
            out[start : start + batch_size] = model.encode(data[start : start + batch_size]).float()
    return out
