"""Reference workloads: a model, its input pipeline (decode + augment) and a real training step.

Five built-ins, all with random weights (``weights=None``; nothing is downloaded):

* ``resnet50``, ``resnet18``, ``mobilenet_v3_small``: ImageNet-style 224x224 training
  (RandomResizedCrop(224) + horizontal flip; normalisation happens on the device).
* ``mnist-cnn`` and ``cifar-resnet50``: the two workloads of the DELI paper (28x28 grayscale with a
  small CNN, batch 512; 32x32 colour with a CIFAR-style ResNet-50, batch 1024).

Each workload's decoder is a :class:`delibench.loaders.ImageDecoder` (the loaders' one decoder,
``(bytes, label) -> item``) set to the workload's size, channels and augmentation: a picklable object
that turns a sample's bytes into a ``uint8`` CHW tensor in DataLoader worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from delibench.errors import UsageError
from delibench.loaders.decode import ImageDecoder
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
        return ImageDecoder(size=self.image_size, channels=self.channels, augment=augment)

    def model(self) -> Any:
        """A freshly initialised network (random weights)."""
        if self.arch == "mnist-cnn":
            if self.image_size != 28:
                raise UsageError("mnist-cnn needs 28x28 inputs")
            return _mnist_cnn(self.num_classes)
        if self.arch == "cifar-resnet50":
            return _cifar_resnet50(self.num_classes)
        return _torchvision(self.arch, self.num_classes)

    def parameter_count(self) -> int:
        """Trainable parameters of the network (the elements DDP all-reduces every step)."""
        return sum(p.numel() for p in self.model().parameters() if p.requires_grad)

    def build(
        self,
        device: Any = None,
        compute: ComputeSpec | None = None,
        *,
        amp: bool = True,
        seed: int | None = 0,
        world_size: int = 1,
    ) -> Any:
        """The :class:`~delibench.workloads.compute.Compute` that runs this workload's step.

        Args:
            device: ``cuda``/``cpu``/``torch.device``; default: from ``compute.kind`` (``auto`` picks CUDA
                when present).
            compute: The parsed ``--compute``; ``emulated`` returns an
                :class:`~delibench.workloads.compute.EmulatedCompute` and builds no model.
            amp: Autocast on CUDA (bf16 where supported, else fp16).
            seed: Seed of the model's initial weights (None: leave torch's RNG alone).
            world_size: Ranks in the job. Above 1 (with ``torch.distributed`` initialised) a real
                model is wrapped in ``DistributedDataParallel``; an emulated step all-reduces a
                gradient-sized tensor (:meth:`parameter_count` float32 elements) every step.

        Raises:
            UsageError: ``emulated`` without a step time, or CUDA asked for but absent.
        """
        from delibench.workloads.compute import EmulatedCompute, TorchCompute, resolve_device

        spec = compute or ComputeSpec(kind="auto")
        if spec.kind == "emulated":
            if spec.step_time_s is None:
                raise UsageError("emulated compute needs a step time", hint="use --compute emulated:120ms or emulated:<profile>")
            numel = self.parameter_count() if world_size > 1 else 0
            return EmulatedCompute(spec.step_time_s, profile=spec.profile, allreduce_numel=numel)
        if device is None:
            device = resolve_device(spec.kind)
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        return TorchCompute(self.model(), device, mean=self.mean, std=self.std, amp=amp, distributed=world_size > 1)

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
