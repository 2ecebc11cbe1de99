"""Reference workloads: picklable decoders with the right output, and one real training step each on CPU."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from delibench.errors import UsageError
from delibench.plugins import workloads as registry
from delibench.records import ComputeSpec
from delibench.workloads.compute import EmulatedCompute, TorchCompute
from delibench.workloads.models import BUILTIN_WORKLOADS, ImageDecoder, Workload, get_workload

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

NAMES = ["resnet50", "resnet18", "mobilenet_v3_small", "mnist-cnn", "cifar-resnet50"]


def jpeg(height: int, width: int, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_registry_lists_every_builtin_and_rejects_unknown():
    assert set(NAMES) <= set(registry.names())
    for name in NAMES:
        assert registry.get(name) is BUILTIN_WORKLOADS[name]
    with pytest.raises(UsageError, match="resnet50"):
        get_workload("resnet5O")


def test_num_classes_come_from_the_caller():
    wl = get_workload("resnet18", num_classes=7)
    assert wl.num_classes == 7 and BUILTIN_WORKLOADS["resnet18"].num_classes == 1000
    with pytest.raises(UsageError):
        Workload("x", 8, num_classes=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train", [True, False])
def test_decoder_is_picklable_and_shapes_a_real_jpeg(name, train):
    wl = BUILTIN_WORKLOADS[name]
    decoder = pickle.loads(pickle.dumps(wl.decoder(train=train)))
    assert decoder == wl.decoder(train=train)
    for data in (jpeg(375, 500), jpeg(40, 30, "L"), jpeg(64, 96, fmt="PNG")):
        x = decoder(data, 4)
        assert x.dtype == torch.uint8 and x.is_contiguous()
        assert tuple(x.shape) == (wl.channels, wl.image_size, wl.image_size)


def test_eval_decoder_is_deterministic_and_train_decoder_augments():
    data = jpeg(300, 400, seed=1)
    wl = BUILTIN_WORKLOADS["resnet18"]
    ev = wl.decoder(train=False)
    assert torch.equal(ev(data, 0), ev(data, 0))
    tr = wl.decoder(train=True)
    torch.manual_seed(0)
    outs = [tr(data, 0) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_decoder_rejects_bad_settings():
    with pytest.raises(UsageError):
        ImageDecoder(size=32, channels=2)
    with pytest.raises(UsageError):
        ImageDecoder(size=32, augment="mixup")
    with pytest.raises(UsageError, match="not both"):
        ImageDecoder(lambda img: img, size=32)


def test_workload_decoders_are_the_loaders_decoder():
    """One decoder contract: ``(bytes, label) -> item``, the class ``deli_loader`` uses by default."""
    from delibench.loaders import ImageDecoder as LoadersImageDecoder

    assert ImageDecoder is LoadersImageDecoder
    assert isinstance(BUILTIN_WORKLOADS["mnist-cnn"].decoder(), LoadersImageDecoder)


# Batch 2 (BatchNorm needs 2+ samples). resnet50 runs once at its real 224x224 through its real
# decoder; the other ImageNet models take 64x64 inputs (adaptive pooling allows it) to stay fast.
@pytest.mark.parametrize(("name", "side"), [("resnet50", None), ("resnet18", 64), ("mobilenet_v3_small", 64), ("mnist-cnn", None), ("cifar-resnet50", None)])
def test_one_real_training_step_on_cpu_changes_the_weights(name, side):
    wl = get_workload(name, num_classes=5)
    compute = wl.build("cpu", ComputeSpec(kind="cpu"))
    assert isinstance(compute, TorchCompute) and compute.kind == "cpu"
    before = [p.detach().clone() for p in compute.model.parameters()]
    if side is None:
        decoder = wl.decoder()
        items = [decoder(jpeg(120, 160, seed=i), i % 5) for i in range(2)]
        batch = (torch.stack(items), torch.tensor([i % 5 for i in range(2)]))
    else:
        batch = (torch.randint(0, 256, (2, wl.channels, side, side), dtype=torch.uint8), torch.tensor([0, 3]))
    batch = compute.to_device(batch)
    compute.step(batch)
    compute.sync()
    assert compute.last_loss is not None and np.isfinite(compute.last_loss)
    after = list(compute.model.parameters())
    assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after))
    assert compute.last_step_device_s is None  # CUDA events only on CUDA


def test_build_emulated_builds_no_model():
    compute = BUILTIN_WORKLOADS["resnet50"].build(compute=ComputeSpec(kind="emulated", step_time_s=0.01, profile="p"))
    assert isinstance(compute, EmulatedCompute) and compute.step_time_s == 0.01 and compute.profile == "p"
    with pytest.raises(UsageError):
        BUILTIN_WORKLOADS["resnet50"].build(compute=ComputeSpec(kind="emulated"))
