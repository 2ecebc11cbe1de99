"""Reference workloads: a model, its input pipeline (decode + augment) and a real training step.

Five built-ins, all with random weights (``weights=None``; nothing is downloaded):

* ``resnet50``, ``resnet18``, ``mobilenet_v3_small``: ImageNet-style 224x224 training
  (RandomResizedCrop(224) + horizontal flip; normalisation happens on the device).
* ``mnist-cnn`` and ``cifar-resnet50``: the two workloads of the DELI paper (28x28 grayscale with a
  small CNN, batch 512; 32x32 colour with a CIFAR-style ResNet-50, batch 1024).

The decoders are picklable objects (they run in DataLoader worker processes) that turn a sample's
bytes into a ``uint8`` CHW tensor. For the 224 pipeline ``torchvision.io.decode_image`` +
``transforms.v2`` on tensors measured about 2x faster than PIL + ``ToTensor`` + ``Normalize`` (best
of 5 interleaved runs on 114 KB generated JPEGs, one core: 434 vs 178 images/s); for the 28/32-pixel
workloads PIL's JPEG ``draft`` mode (DCT-domain downscaling while decoding) is faster still (about
1,080 vs 690 images/s/core on 100 KB JPEGs), so each decoder uses the faster path for its size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import Any

from delibench.errors import UsageError
from delibench.records import ComputeSpec

__all__ = [
    "BUILTIN_WORKLOADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDecoder",
    "Workload",
    "get_workload",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_MNIST_MEAN = (0.1307,)
_MNIST_STD = (0.3081,)


_TV_DECODE: Any = False


def _tv_decode_image() -> Any:
    """``torchvision.io.decode_image`` or None where this torchvision no longer ships it.

    torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on every call;
    they are still the fastest CPU path measured here, so the warning is silenced (narrowly, by its
    message) and PIL takes over once they are gone.
    """
    global _TV_DECODE
    if _TV_DECODE is False:
        import warnings

        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)
        try:
            from torchvision.io import decode_image
        except ImportError:
            decode_image = None
        _TV_DECODE = decode_image
    return _TV_DECODE


class ImageDecoder:
    """Bytes + label -> (``uint8`` tensor of shape ``(channels, size, size)``, label).

    Picklable (plain attributes only), deterministic in shape, random in augmentation (torch's RNG,
    which DataLoader seeds per worker).

    Args:
        size: Output height and width.
        channels: 3 (RGB) or 1 (grayscale).
        augment: ``imagenet`` (RandomResizedCrop + flip), ``cifar`` (4-pixel pad, random crop,
            flip), ``center`` (resize shorter side to size/0.875, centre crop: evaluation) or
            ``resize`` (plain resize to size x size).
    """

    def __init__(self, size: int, channels: int = 3, augment: str = "imagenet") -> None:
        if channels not in (1, 3):
            raise UsageError(f"decoder: channels must be 1 or 3, got {channels}")
        if augment not in ("imagenet", "cifar", "center", "resize"):
            raise UsageError(f"decoder: unknown augmentation {augment!r}")
        self.size = int(size)
        self.channels = channels
        self.augment = augment

    def __repr__(self) -> str:
        return f"ImageDecoder(size={self.size}, channels={self.channels}, augment={self.augment!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageDecoder) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.size, self.channels, self.augment))

    def __call__(self, data: bytes, label: int) -> tuple[Any, int]:
        if self.size <= 64:
            return self._small(data), label
        return self._large(data), label

    def _large(self, data: bytes) -> Any:
        import torch
        from torchvision.transforms.v2 import functional as F

        decode = _tv_decode_image()
        img = None
        if decode is not None:
            from torchvision.io import ImageReadMode

            mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
            try:
                img = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
            except RuntimeError:  # a format torchvision cannot read (BMP, TIFF): PIL below
                img = None
        if img is None:
            img = self._pil_tensor(data, None)
        size = [self.size, self.size]
        if self.augment == "imagenet":
            from torchvision.transforms.v2 import RandomResizedCrop

            top, left, h, w = RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
            img = F.resized_crop(img, top, left, h, w, size, antialias=True)
            if torch.rand(1).item() < 0.5:
                img = F.horizontal_flip(img)
        elif self.augment == "center":
            img = F.resize(img, [int(self.size / 0.875)], antialias=True)
            img = F.center_crop(img, size)
        else:
            img = F.resize(img, size, antialias=True)
            if self.augment == "cifar":
                img = self._cifar(img)
        return img.contiguous()

    def _small(self, data: bytes) -> Any:
        import torch

        img = self._pil_tensor(data, self.size)
        from torchvision.transforms.v2 import functional as F

        if img.shape[-2:] != (self.size, self.size):
            img = F.resize(img, [self.size, self.size], antialias=True)
        if self.augment == "cifar":
            img = self._cifar(img)
        elif self.augment == "imagenet" and torch.rand(1).item() < 0.5:
            img = F.horizontal_flip(img)
        return img.contiguous()

    def _pil_tensor(self, data: bytes, draft_size: int | None) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        mode = "RGB" if self.channels == 3 else "L"
        with Image.open(io.BytesIO(data)) as im:
            if draft_size is not None and im.format == "JPEG":
                im.draft(mode, (draft_size, draft_size))  # decode at 1/2..1/8 scale, never below size
            im = im.convert(mode)
            if draft_size is not None and im.size != (draft_size, draft_size):
                im = im.resize((draft_size, draft_size), Image.BILINEAR)
            arr = np.array(im, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr).permute(2, 0, 1)

    def _cifar(self, img: Any) -> Any:
        import torch
        from torchvision.transforms.v2 import functional as F

        padded = F.pad(img, [4, 4, 4, 4])
        i, j = torch.randint(0, 9, (2,)).tolist()
        img = padded[:, i : i + self.size, j : j + self.size]
        if torch.rand(1).item() < 0.5:
            img = F.horizontal_flip(img)
        return img


def _mnist_cnn(num_classes: int) -> Any:
    """The PyTorch examples' MNIST network (two convolutions, dropout, two dense layers)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )


def _cifar_resnet50(num_classes: int) -> Any:
    """ResNet-50 adapted to 32x32 inputs: 3x3 stride-1 stem and no max-pool (as in pytorch-cifar)."""
    from torch import nn
    from torchvision.models import resnet50

    model = resnet50(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _torchvision(arch: str, num_classes: int) -> Any:
    import torchvision.models as tvm

    return getattr(tvm, arch)(weights=None, num_classes=num_classes)


@dataclass(frozen=True)
class Workload:
    """A model, its input pipeline and its training step.

    Attributes:
        name: Registry name (``resnet50``, ``mnist-cnn``, ...).
        default_batch_size: Batch size used when the run does not set one.
        num_classes: Output classes; set from the dataset's manifest with :meth:`for_classes`.
        image_size: Height and width the decoder produces.
        channels: 3 (RGB) or 1 (grayscale).
        arch: ``mnist-cnn``, ``cifar-resnet50`` or a torchvision model function name.
        augment: The decoder's training augmentation.
        mean: Normalisation mean per channel (applied on the device).
        std: Normalisation std per channel.
    """

    name: str
    default_batch_size: int
    num_classes: int = 1000
    image_size: int = 224
    channels: int = 3
    arch: str = "resnet50"
    augment: str = "imagenet"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise UsageError(f"workload {self.name!r}: num_classes must be at least 1, got {self.num_classes}")

    def for_classes(self, num_classes: int) -> Workload:
        """The same workload with ``num_classes`` outputs (pass ``len(manifest.classes)``)."""
        return replace(self, num_classes=max(int(num_classes), 1))

    def decoder(self, train: bool = True) -> ImageDecoder:
        """The picklable decode + augment callable for DataLoader workers (``train=False``: no augmentation)."""
        if train:
            augment = self.augment
        else:
            augment = "center" if self.augment == "imagenet" else "resize"
        return ImageDecoder(self.image_size, self.channels, augment)

    def model(self) -> Any:
        """A freshly initialised network (random weights)."""
        if self.arch == "mnist-cnn":
            if self.image_size != 28:
                raise UsageError("mnist-cnn needs 28x28 inputs")
            return _mnist_cnn(self.num_classes)
        if self.arch == "cifar-resnet50":
            return _cifar_resnet50(self.num_classes)
        return _torchvision(self.arch, self.num_classes)

    def build(self, device: Any = None, compute: ComputeSpec | None = None, *, amp: bool = True, seed: int | None = 0) -> Any:
        """The :class:`~delibench.workloads.compute.Compute` that runs this workload's step.

        Args:
            device: ``cuda``/``cpu``/``torch.device``; default: from ``compute.kind`` (``auto`` picks CUDA
                when present).
            compute: The parsed ``--compute``; ``emulated`` returns an
                :class:`~delibench.workloads.compute.EmulatedCompute` and builds no model.
            amp: Autocast on CUDA (bf16 where supported, else fp16).
            seed: Seed of the model's initial weights (None: leave torch's RNG alone).

        Raises:
            UsageError: ``emulated`` without a step time, or CUDA asked for but absent.
        """
        from delibench.workloads.compute import EmulatedCompute, TorchCompute, resolve_device

        spec = compute or ComputeSpec(kind="auto")
        if spec.kind == "emulated":
            if spec.step_time_s is None:
                raise UsageError("emulated compute needs a step time", hint="use --compute emulated:120ms or emulated:<profile>")
            return EmulatedCompute(spec.step_time_s, profile=spec.profile)
        if device is None:
            device = resolve_device(spec.kind)
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        return TorchCompute(self.model(), device, mean=self.mean, std=self.std, amp=amp)

    def example_batch(self, batch_size: int) -> tuple[Any, Any]:
        """Random ``uint8`` inputs and labels of this workload's shape (calibration, smoke tests)."""
        import torch

        inputs = torch.randint(0, 256, (batch_size, self.channels, self.image_size, self.image_size), dtype=torch.uint8)
        labels = torch.randint(0, self.num_classes, (batch_size,))
        return inputs, labels


#: The built-in workloads by name; registered in :data:`delibench.plugins.workloads`.
BUILTIN_WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("resnet50", default_batch_size=256, arch="resnet50"),
        Workload("resnet18", default_batch_size=256, arch="resnet18"),
        Workload("mobilenet_v3_small", default_batch_size=256, arch="mobilenet_v3_small"),
        Workload(
            "mnist-cnn",
            default_batch_size=512,
            num_classes=10,
            image_size=28,
            channels=1,
            arch="mnist-cnn",
            augment="resize",
            mean=_MNIST_MEAN,
            std=_MNIST_STD,
        ),
        Workload(
            "cifar-resnet50",
            default_batch_size=1024,
            num_classes=10,
            image_size=32,
            arch="cifar-resnet50",
            augment="cifar",
            mean=_CIFAR_MEAN,
            std=_CIFAR_STD,
        ),
    )
}

RESNET50 = BUILTIN_WORKLOADS["resnet50"]
RESNET18 = BUILTIN_WORKLOADS["resnet18"]
MOBILENET_V3_SMALL = BUILTIN_WORKLOADS["mobilenet_v3_small"]
MNIST_CNN = BUILTIN_WORKLOADS["mnist-cnn"]
CIFAR_RESNET50 = BUILTIN_WORKLOADS["cifar-resnet50"]


def get_workload(name: str, *, num_classes: int | None = None) -> Workload:
    """Look a workload up in the registry (built-ins and plugins), sized to ``num_classes``.

    Raises:
        UsageError: Unknown name (with a suggestion).
    """
    from delibench.plugins import workloads

    wl = workloads.get(name)
    if not isinstance(wl, Workload):
        raise UsageError(f"workload {name!r} is registered as {type(wl).__name__}, not a Workload")
    return wl.for_classes(num_classes) if num_classes is not None else wl
