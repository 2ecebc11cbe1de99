"""The one image decoder: image bytes + label -> training item (the loaders' ``Decoder`` contract).

Two pipelines behind one class:

* ``ImageDecoder(transform)`` (the ``deli_loader`` default): Pillow decodes the bytes, ``transform``
  turns the PIL image into the item (default: a float tensor), as torchvision datasets do.
* ``ImageDecoder(size=..., channels=..., augment=...)`` (the reference workloads' decoders): a
  ``uint8`` CHW tensor of ``(channels, size, size)``, augmented on the tensor. For the 224 pipeline
  ``torchvision.io.decode_image`` + ``transforms.v2`` on tensors measured about 2x faster than PIL +
  ``ToTensor`` + ``Normalize`` (best of 5 interleaved runs on 114 KB generated JPEGs, one core: 434
  vs 178 images/s); for 28/32-pixel outputs PIL's JPEG ``draft`` mode (DCT-domain downscaling while
  decoding) is faster still (about 1,080 vs 690 images/s/core on 100 KB JPEGs), so each size uses
  the faster path.

Both return the item only: loaders carry the labels themselves.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from delibench.errors import UsageError

__all__ = ["AUGMENTATIONS", "ImageDecoder"]

#: The tensor pipeline's augmentations: ``imagenet`` (RandomResizedCrop + flip), ``cifar``
#: (4-pixel pad, random crop, flip), ``center`` (resize shorter side to size/0.875, centre crop:
#: evaluation) and ``resize`` (plain resize to size x size).
AUGMENTATIONS = ("imagenet", "cifar", "center", "resize")

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
    """Image bytes + label -> item.

    Picklable as long as ``transform`` is (torchvision transforms are); the tensor pipeline is
    deterministic in shape and random in augmentation (torch's RNG, which DataLoader seeds per worker).

    Args:
        transform: Applied to the decoded PIL image (default: to a float tensor). Not with ``size``.
        size: Output height and width of the ``uint8`` tensor pipeline (None: the PIL pipeline).
        channels: 3 (RGB) or 1 (grayscale).
        augment: The tensor pipeline's augmentation, one of :data:`AUGMENTATIONS`.

    Raises:
        UsageError: Bad channels or augmentation, a size below 1, or both ``transform`` and ``size``.
    """

    def __init__(
        self,
        transform: Callable[[Any], Any] | None = None,
        *,
        size: int | None = None,
        channels: int = 3,
        augment: str = "imagenet",
    ) -> None:
        if channels not in (1, 3):
            raise UsageError(f"decoder: channels must be 1 or 3, got {channels}")
        if augment not in AUGMENTATIONS:
            raise UsageError(f"decoder: unknown augmentation {augment!r}", hint=f"use one of {', '.join(AUGMENTATIONS)}")
        if size is not None and int(size) < 1:
            raise UsageError(f"decoder: size must be at least 1, got {size}")
        if size is not None and transform is not None:
            raise UsageError("decoder: give a transform (PIL pipeline) or a size (tensor pipeline), not both")
        self.transform = transform
        self.size = None if size is None else int(size)
        self.channels = channels
        self.augment = augment

    def __repr__(self) -> str:
        if self.size is None:
            return f"ImageDecoder(transform={self.transform!r}, channels={self.channels})"
        return f"ImageDecoder(size={self.size}, channels={self.channels}, augment={self.augment!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageDecoder) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.size, self.channels, self.augment))

    def __call__(self, data: bytes, label: int) -> Any:
        if self.size is None:
            return self._pil(data)
        if self.size <= 64:
            return self._small(data, self.size)
        return self._large(data, self.size)

    def _pil(self, data: bytes) -> Any:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            image = img.convert("RGB" if self.channels == 3 else "L")
        if self.transform is not None:
            return self.transform(image)
        from torchvision.transforms.functional import to_tensor

        return to_tensor(image)

    def _large(self, data: bytes, side: int) -> Any:
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
        size = [side, side]
        if self.augment == "imagenet":
            from torchvision.transforms.v2 import RandomResizedCrop

            top, left, h, w = RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
            img = F.resized_crop(img, top, left, h, w, size, antialias=True)
            if torch.rand(1).item() < 0.5:
                img = F.horizontal_flip(img)
        elif self.augment == "center":
            img = F.resize(img, [int(side / 0.875)], antialias=True)
            img = F.center_crop(img, size)
        else:
            img = F.resize(img, size, antialias=True)
            if self.augment == "cifar":
                img = _cifar(img, side)
        return img.contiguous()

    def _small(self, data: bytes, side: int) -> Any:
        import torch

        img = self._pil_tensor(data, side)
        from torchvision.transforms.v2 import functional as F

        if img.shape[-2:] != (side, side):
            img = F.resize(img, [side, side], antialias=True)
        if self.augment == "cifar":
            img = _cifar(img, side)
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


def _cifar(img: Any, side: int) -> Any:
    import torch
    from torchvision.transforms.v2 import functional as F

    padded = F.pad(img, [4, 4, 4, 4])
    i, j = torch.randint(0, 9, (2,)).tolist()
    img = padded[:, i : i + side, j : j + side]
    if torch.rand(1).item() < 0.5:
        img = F.horizontal_flip(img)
    return img
