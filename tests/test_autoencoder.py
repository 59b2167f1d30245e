"""gpuclust.app.autoencoder (presets, the model) and gpuclust.app.training (training, checkpoints, encoding)."""

import numpy as np
import pytest
import torch

from gpuclust.app.autoencoder import PRESETS, ConvAutoencoder, count_parameters, images_to_tensor
from gpuclust.app.training import encode, load_checkpoint, train_autoencoder


def tiny_images(n=96, seed=0):
    rng = np.random.RandomState(seed)
    # Smooth blobs, so there is something to learn in a few steps.
    yy, xx = np.mgrid[:28, :28]
    cy, cx = rng.uniform(8, 20, (2, n, 1, 1))
    return (255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)).astype(np.uint8)


def test_seed_preset_has_the_reports_parameter_counts():
    trainable, running = count_parameters(ConvAutoencoder("seed"))
    assert trainable == 185_857
    assert running == 640
    assert trainable + running == 186_497


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shapes(preset):
    model = ConvAutoencoder(preset).eval()
    x = torch.rand(3, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (3, model.latent_dim)
    assert model.decode(z).shape == (3, 1, 28, 28)
    assert model.latent_dim == (6272 if preset == "seed" else PRESETS[preset].bottleneck)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        ConvAutoencoder("huge")


def test_loss_falls_over_a_few_steps():
    images = tiny_images()
    _, history = train_autoencoder(
        images[:64], images[64:], preset="dense10", epochs=6, batch_size=16, progress=False, device="cpu"
    )
    assert history.train_loss[-1] < 0.7 * history.train_loss[0]
    assert len(history.val_loss) == 6 and all(v > 0 for v in history.images_per_second)


def test_checkpoint_round_trip_and_resume_equals_uninterrupted(tmp_path):
    images = tiny_images()
    kw = dict(preset="dense10", batch_size=32, progress=False, device="cpu", seed=3, patience=50)
    straight, h_straight = train_autoencoder(images[:64], images[64:], epochs=4, **kw)
    ckpt = tmp_path / "ae.pt"
    train_autoencoder(images[:64], images[64:], epochs=2, checkpoint=ckpt, **kw)
    assert ckpt.is_file() and not list(tmp_path.glob(".*.tmp"))
    resumed, h_resumed = train_autoencoder(images[:64], images[64:], epochs=4, checkpoint=ckpt, resume=True, **kw)
    assert h_resumed.train_loss == h_straight.train_loss
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    loaded, info = load_checkpoint(ckpt)
    assert info["epoch"] == 4 and len(info["history"]["val_loss"]) == 4
    x = images_to_tensor(images[:5])
    assert torch.equal(loaded.encode(x), resumed.encode(x))


def test_resume_with_another_architecture_is_clear_error(tmp_path):
    images = tiny_images(40)
    ckpt = tmp_path / "ae.pt"
    train_autoencoder(
        images[:32], images[32:], preset="dense10", epochs=1, checkpoint=ckpt, progress=False, device="cpu"
    )
    with pytest.raises(ValueError, match="architecture"):
        train_autoencoder(
            images[:32],
            images[32:],
            preset="dense32",
            epochs=2,
            checkpoint=ckpt,
            resume=True,
            progress=False,
            device="cpu",
        )


def test_bad_checkpoint_file(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable gpuclust checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_early_stopping_restores_best_epoch():
    images = tiny_images(64)
    _, history = train_autoencoder(
        images[:48],
        images[48:],
        preset="dense10",
        epochs=30,
        batch_size=48,
        lr=5e-2,
        patience=2,
        progress=False,
        device="cpu",
    )
    assert history.stopped_early  # lr=5e-2 makes the validation loss bounce within 30 epochs
    assert history.best_epoch == int(np.argmin(history.val_loss)) + 1
    assert len(history.val_loss) == history.best_epoch + 2


def test_encode_stays_on_device_and_batches():
    model = ConvAutoencoder("dense10")
    z = encode(model, tiny_images(50), batch_size=7)
    assert z.shape == (50, 10) and z.device.type == "cpu"
    assert torch.allclose(z, model.eval().encode(images_to_tensor(tiny_images(50))), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_encode_on_gpu_returns_gpu_tensor():
    model = ConvAutoencoder("dense10").cuda()
    z = encode(model, tiny_images(20))
    assert z.is_cuda


@pytest.mark.parametrize(
    "images,match",
    [
        (np.zeros((4, 32, 32), dtype=np.uint8), "shape"),
        (np.zeros((4, 28, 28), dtype=np.int32), "dtype"),
        (np.full((4, 28, 28), 3.0, dtype=np.float32), r"\[0, 1\]"),
        (np.zeros((0, 28, 28), dtype=np.uint8), "empty"),
    ],
)
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        images_to_tensor(images)


def test_bad_training_settings():
    with pytest.raises(ValueError, match="positive"):
        train_autoencoder(tiny_images(8), tiny_images(4), epochs=0, progress=False, device="cpu")


# --- checkpoints: no code execution, structure validated, resume refuses changed settings -------


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _small_checkpoint(tmp_path, **kw):
    images = tiny_images(40)
    ckpt = tmp_path / "ae.pt"
    args = dict(preset="dense10", epochs=1, batch_size=16, checkpoint=ckpt, progress=False, device="cpu", **kw)
    train_autoencoder(images[:32], images[32:], **args)
    return ckpt, images, args


def test_checkpoint_holds_only_plain_data_and_loads_with_weights_only(tmp_path):
    ckpt, _, _ = _small_checkpoint(tmp_path)
    raw = torch.load(ckpt, weights_only=True)  # raises if anything but tensors and plain containers
    assert set(raw) >= {"model", "optimizer", "history", "config", "best_state"}
    assert raw["config"]["data"]["n_train"] == 32


def test_checkpoint_with_pickled_callable_is_refused_without_running_it(tmp_path):
    ckpt, _, _ = _small_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    payload = torch.load(ckpt, weights_only=True)
    payload["config"]["extra"] = _RunsAShellCommand(marker)
    torch.save(payload, ckpt)
    with pytest.raises(ValueError, match="not a readable gpuclust checkpoint") as err:
        load_checkpoint(ckpt)
    assert not marker.exists()
    # One line that names what was refused, and no advice to load it unsafely (issue 24).
    (line,) = str(err.value).splitlines()
    assert "posix.system" in line  # what the file would have called
    assert "weights_only" not in line and "trust" not in line and "\x1b" not in line


def _mutate(payload, path, value):
    *parents, last = path
    target = payload
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value


@pytest.mark.parametrize(
    "path,value,match",
    [
        (("format",), "something-else", "not a gpuclust autoencoder checkpoint"),
        (("model",), KeyError, "lacks model"),
        (("epoch",), "1", "'epoch' is a str"),
        (("history",), [1.0], "'history' is a list"),
        (("history", "val_loss"), KeyError, "history lacks val_loss"),
        (("history", "surprise"), 1, "unknown field"),
        (("config", "architecture"), KeyError, "config lacks architecture"),
        (("config", "architecture", "channels"), [32, -1], "not positive integers"),
        (("epoch",), 5, "epoch 5 but 1 training"),
        (("model", "encoder.0.weight"), torch.zeros(3, 3), "do not fit its architecture"),
        (("model", "decoder.extra"), torch.zeros(1), "do not fit its architecture"),
        (("best_state",), {"w": [1, 2]}, "not a named tensor"),
    ],
)
def test_checkpoint_with_wrong_structure_is_value_error_naming_it(tmp_path, path, value, match):
    ckpt, _, _ = _small_checkpoint(tmp_path)
    payload = torch.load(ckpt, weights_only=True)
    _mutate(payload, path, value)
    torch.save(payload, ckpt)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"seed": 5}, "seed 0 in the checkpoint, 5 now"),
        ({"batch_size": 8}, "batch_size 16 in the checkpoint, 8 now"),
        ({"lr": 1e-2}, "lr 0.001 in the checkpoint, 0.01 now"),
        ({"train_images": 31}, "data 32 training"),
    ],
)
def test_resume_with_changed_settings_is_refused_naming_them(tmp_path, change, match):
    ckpt, images, args = _small_checkpoint(tmp_path)
    before = ckpt.read_bytes()
    n_train = change.pop("train_images", 32)
    args.update(change, epochs=2, resume=True)
    with pytest.raises(ValueError, match=match):
        train_autoencoder(images[:n_train], images[32:], **args)
    assert ckpt.read_bytes() == before
    _, history = train_autoencoder(images[:n_train], images[32:], allow_changed_settings=True, **args)
    assert len(history.train_loss) == 2


def test_cuda_path_on_the_cpu_trains_with_bf16_channels_last_and_resumes_bit_exact(tmp_path):
    images = tiny_images(40)
    kw = dict(preset="dense10", batch_size=16, progress=False, device="cpu", seed=1, patience=50)
    cuda = dict(kw, channels_last_bf16=True)  # what CUDA runs, asked for on the CPU
    straight, h_straight = train_autoencoder(images[:32], images[32:], epochs=2, **cuda)
    ckpt = tmp_path / "ae.pt"
    train_autoencoder(images[:32], images[32:], epochs=1, checkpoint=ckpt, **cuda)
    resumed, h_resumed = train_autoencoder(images[:32], images[32:], epochs=2, checkpoint=ckpt, resume=True, **cuda)
    plain, h_plain = train_autoencoder(images[:32], images[32:], epochs=2, **kw)
    assert h_resumed.train_loss == h_straight.train_loss
    assert h_plain.train_loss != h_straight.train_loss  # the CUDA path did run bf16 autocast
    explicit_off, h_off = train_autoencoder(images[:32], images[32:], epochs=2, channels_last_bf16=False, **kw)
    assert h_off.train_loss == h_plain.train_loss  # None on the CPU is False
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.encoder[0].weight.is_contiguous()  # returned in the default memory format
    z_bf16, z_plain = encode(straight, images, bf16=True), encode(straight, images)
    assert z_bf16.dtype == z_plain.dtype == torch.float32 and not torch.equal(z_bf16, z_plain)
    assert torch.allclose(z_bf16, z_plain, rtol=0.05, atol=0.05)


def test_the_cuda_path_is_decided_by_the_device_unless_asked_for():
    from gpuclust.app.training import channels_last_bf16_on, mixed_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (channels_last_bf16_on(cpu), channels_last_bf16_on(cuda)) == (False, True)
    assert (channels_last_bf16_on(cpu, True), channels_last_bf16_on(cuda, False)) == (True, False)
    with mixed_precision(cpu):
        assert not torch.is_autocast_enabled("cpu")
    with mixed_precision(cpu, True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# --- shift augmentation (issue 17) ----------------------------------------------------------------


def test_shift_images_moves_each_image_by_its_own_offsets_filling_zeros():
    from gpuclust.app.training import shift_images

    x = torch.arange(2 * 25, dtype=torch.float32).reshape(2, 1, 5, 5) + 1
    out = shift_images(x, torch.tensor([[1, 0], [-2, 2]]), 2)
    assert torch.equal(out[0, 0, 1:], x[0, 0, :-1]) and not out[0, 0, 0].any()  # one row down
    assert torch.equal(out[1, 0, :3, 2:], x[1, 0, 2:, :3])  # two rows up, two columns right
    assert not out[1, 0, 3:].any() and not out[1, 0, :, :2].any()
    assert torch.equal(shift_images(x, torch.zeros(2, 2, dtype=torch.long), 0), x)


def test_shift_augmentation_trains_deterministically_and_resumes_exactly(tmp_path):
    images = tiny_images()
    kw = dict(preset="dense10", batch_size=32, progress=False, device="cpu", seed=1, patience=50, augment_shift=2)
    straight, h_straight = train_autoencoder(images[:64], images[64:], epochs=3, **kw)
    again, h_again = train_autoencoder(images[:64], images[64:], epochs=3, **kw)
    plain, h_plain = train_autoencoder(images[:64], images[64:], epochs=3, **{**kw, "augment_shift": 0})
    assert h_again.train_loss == h_straight.train_loss != h_plain.train_loss
    ckpt = tmp_path / "ae.pt"
    train_autoencoder(images[:64], images[64:], epochs=1, checkpoint=ckpt, **kw)
    resumed, h_resumed = train_autoencoder(images[:64], images[64:], epochs=3, checkpoint=ckpt, resume=True, **kw)
    assert h_resumed.train_loss == h_straight.train_loss
    with pytest.raises(ValueError, match="augment_shift 2 in the checkpoint, 0 now"):
        kw["augment_shift"] = 0
        train_autoencoder(images[:64], images[64:], epochs=3, checkpoint=ckpt, resume=True, **kw)


@pytest.mark.parametrize("bad", [-1, 9, 1.5, True])
def test_bad_augment_shift(bad):
    with pytest.raises(ValueError, match="augment_shift"):
        train_autoencoder(tiny_images(8), tiny_images(4), epochs=1, progress=False, device="cpu", augment_shift=bad)


def test_a_checkpoint_from_before_augment_shift_resumes_only_without_it(tmp_path):
    ckpt, images, args = _small_checkpoint(tmp_path)
    payload = torch.load(ckpt, weights_only=True)
    del payload["config"]["augment_shift"]  # as written before the setting existed
    torch.save(payload, ckpt)
    args.update(epochs=2, resume=True)
    with pytest.raises(ValueError, match="augment_shift 0 in the checkpoint, 2 now"):
        train_autoencoder(images[:32], images[32:], augment_shift=2, **args)
    _, history = train_autoencoder(images[:32], images[32:], **args)
    assert len(history.train_loss) == 2
