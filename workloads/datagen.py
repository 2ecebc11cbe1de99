"""Synthetic image-classification datasets made of real JPEG files, generated fast and deterministically.

Why synthetic: this machine (and CI) cannot download ImageNet, yet a storage benchmark needs objects
whose count, size distribution and decode cost resemble it. Every sample is a real JPEG that PIL
and torchvision decode; its class shows in its colour and stripe pattern, so a model can learn
something; sizes follow a log-normal distribution around ``mean_bytes`` (ImageNet's train set
averages about 110 KB per file).

Speed comes from doing the expensive part once: a few multi-scale noise textures are computed per
process, and each image is a random crop of one of them plus a per-class colour and stripe pattern
(a handful of vectorised numpy operations) before libjpeg-turbo encodes it. Sizes are steered
without trial encodes: for variable-size (ImageNet-like) images the pixel count is chosen from a
bytes-per-pixel rate calibrated once; for fixed shapes (CIFAR, MNIST) the JPEG quality is chosen
from a calibrated size-versus-quality curve.

Layouts: ``files`` writes ``class_000/000123.jpg`` (torchvision ImageFolder layout, one object per
sample); ``shards`` writes WebDataset tar shards ``shard-000000.tar`` with members ``000123.jpg``
and ``000123.cls`` (samples shuffled across shards, so each shard mixes classes); ``both`` writes
both. The manifest (keys, sizes, labels, checksums, shards) is written last.

Shards are files at the dataset root, beside the class folders and the manifest, never in a folder
of their own: ``torchvision.datasets.ImageFolder`` takes every folder under its root for a class
(a ``shards/`` folder became an eleventh, empty class and changed a model's output layer) and
skips plain files. So the root one ``aws s3 cp --recursive`` downloads is, as is, an ImageFolder
root with the manifest's classes and a WebDataset (``shard-{000000..000009}.tar``), and
``data push`` keeps uploading one prefix. Datasets made before (shards under ``shards/``) still
load: loaders take each shard's key from the manifest.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from delibench.errors import UsageError
from delibench.manifest import MANIFEST_NAME, Manifest, SampleEntry, ShardEntry, checksum, read_manifest, write_manifest

__all__ = [
    "LAYOUTS",
    "PRESETS",
    "GenerationSpec",
    "Preset",
    "ProgressCallback",
    "make_dataset",
    "sample_key",
    "shard_key",
]

#: ``progress(done, total)``: called in the calling process as samples are written.
ProgressCallback = Callable[[int, int], None]

#: Dataset layouts: one object per sample, WebDataset tar shards, or both.
LAYOUTS = ("files", "shards", "both")

# NOTE: 512-pixel textures cover ImageNet-like images (~550x410 at 110 KB); larger images use
# larger textures, chosen per dataset, so bytes per pixel stay the same across sizes.
_TEXTURE_COUNT = 4
_MIN_SIDE = 8
_MAX_SIDE = 4096
_CHUNK = 16
_STRIPE_AMPLITUDE = 45


@dataclass(frozen=True, slots=True)
class Preset:
    """Shape defaults of a well-known dataset.

    Attributes:
        name: Preset name.
        image_size: ``(height, width)`` of every image, or ``None`` for variable sizes chosen to
            reach the size distribution (ImageNet's images vary in shape).
        channels: 3 (RGB) or 1 (grayscale).
        mean_bytes: Default mean file size, or ``None`` to keep the preset's JPEG quality as is.
        quality: JPEG quality used for variable-size images, and for fixed shapes with no size target.
    """

    name: str
    image_size: tuple[int, int] | None
    channels: int
    mean_bytes: int | None
    quality: int


#: The DELI paper's workloads use ImageNet-, CIFAR- and MNIST-shaped data.
PRESETS: dict[str, Preset] = {
    "imagenet": Preset("imagenet", None, 3, 110_000, 90),
    "cifar": Preset("cifar", (32, 32), 3, None, 95),
    "mnist": Preset("mnist", (28, 28), 1, None, 95),
}


@dataclass(frozen=True, slots=True)
class GenerationSpec:
    """Resolved inputs of one generation; two equal specs produce byte-identical datasets.

    Attributes:
        samples: Number of images.
        classes: Number of classes (folders ``class_000`` ...); labels are assigned in contiguous
            blocks, so the manifest's order is also the sorted key order an ImageFolder listing gives.
        image_size: Fixed ``(height, width)`` or ``None`` for variable sizes.
        channels: 3 or 1.
        mean_bytes: Target mean file size, or ``None`` (fixed quality).
        size_sigma: Standard deviation of log(size); 0 makes every file the same size.
        quality: JPEG quality for variable sizes or fixed shapes without a target.
        layout: ``files``, ``shards`` or ``both``.
        shard_samples: Samples per tar shard.
        seed: Seed of everything random.
    """

    samples: int
    classes: int
    image_size: tuple[int, int] | None
    channels: int
    mean_bytes: int | None
    size_sigma: float
    quality: int
    layout: str
    shard_samples: int
    seed: int

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise UsageError(f"samples must be at least 1, got {self.samples}")
        if not 1 <= self.classes <= self.samples:
            raise UsageError(f"classes must lie in [1, samples={self.samples}], got {self.classes}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"unknown layout {self.layout!r}", hint=f"use one of: {', '.join(LAYOUTS)}")
        if self.shard_samples < 1:
            raise UsageError(f"shard size must be at least 1 sample, got {self.shard_samples}")
        if self.image_size is not None:
            h, w = self.image_size
            if not (_MIN_SIDE <= h <= _MAX_SIDE and _MIN_SIDE <= w <= _MAX_SIDE):
                raise UsageError(f"image size {h}x{w} is outside [{_MIN_SIDE}, {_MAX_SIDE}] pixels per side")
        if self.image_size is None and self.mean_bytes is None:
            raise UsageError("variable-size images need a mean size", hint="pass mean_bytes or a fixed image_size")
        if self.mean_bytes is not None and self.mean_bytes < 500:
            raise UsageError(f"mean size {self.mean_bytes} B is below the ~500 B a JPEG header takes")
        if not 0.0 <= self.size_sigma <= 2.0:
            raise UsageError(f"size sigma must lie in [0, 2], got {self.size_sigma}")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"JPEG quality must lie in [1, 100], got {self.quality}")
        if self.channels not in (1, 3):
            raise UsageError(f"channels must be 1 or 3, got {self.channels}")

    def label_of(self, index: int) -> int:
        """Class of sample ``index`` (contiguous blocks of near-equal size)."""
        return index * self.classes // self.samples


def sample_key(index: int, label: int, samples: int, classes: int) -> str:
    """The object key of a sample in the ``files`` layout: ``class_003/000123.jpg``."""
    cw = max(3, len(str(classes - 1)))
    iw = max(6, len(str(samples - 1)))
    return f"class_{label:0{cw}d}/{index:0{iw}d}.jpg"


def shard_key(number: int) -> str:
    """The object key of a tar shard: ``shard-000000.tar``, a file at the dataset root.

    Not in a folder: ImageFolder would take a folder at the root for a class (see the module's notes).
    """
    return f"shard-{number:06d}.tar"


# ----------------------------------------------------------------------------------------------
# Image synthesis (runs in worker processes; module-level state is per process)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a worker needs to render samples: the spec plus the calibration results."""

    spec: GenerationSpec
    texture_side: int
    bytes_per_pixel: float
    header_bytes: float
    quality_curve: tuple[tuple[float, ...], tuple[float, ...]] | None  # (sizes, qualities), ascending


_TEXTURES: dict[tuple[int, int, int], list[Any]] = {}


def _textures(seed: int, side: int, channels: int) -> list[Any]:
    """Multi-scale value-noise textures (PIL images centred on grey 128), computed once per process."""
    key = (seed, side, channels)
    if key not in _TEXTURES:
        from PIL import Image

        rng = np.random.default_rng((seed, 0x7E47))
        textures = []
        for _ in range(_TEXTURE_COUNT):
            acc = np.full((side, side, channels), 128.0, np.float32)
            # Coarse blobs to pixel-level grain, like natural images' falling spectrum.
            for cells, weight in ((8, 0.60), (32, 0.40), (128, 0.25), (side, 0.18)):
                n = min(cells, side)
                small = rng.integers(0, 256, (n, n, channels), dtype=np.uint8)
                img = Image.fromarray(small[..., 0] if channels == 1 else small)
                if n != side:
                    img = img.resize((side, side), Image.BICUBIC)
                acc += (np.asarray(img, np.float32).reshape(side, side, channels) - 128.0) * weight
            pixels = np.clip(acc, 1, 255).astype(np.uint8)
            textures.append(Image.fromarray(pixels[..., 0] if channels == 1 else pixels))
        _TEXTURES.clear()  # one dataset's textures per process at a time
        _TEXTURES[key] = textures
    return _TEXTURES[key]


def _class_style(label: int, classes: int, channels: int) -> tuple[list[int], float, float]:
    """A class's base colour (or grey level) minus the stripe amplitude, stripe angle and frequency."""
    hue = (label * 0.6180339887) % 1.0
    if channels == 3:
        colour = [int(128 + 70 * math.cos(2 * math.pi * (hue + k / 3))) for k in range(3)]
    else:
        colour = [60 + int(140 * hue)]
    angle = math.pi * label / max(classes, 1)
    freq = 0.03 + 0.25 * ((label * 0.3819660113) % 1.0)
    return [c - _STRIPE_AMPLITUDE for c in colour], angle, freq


def _render(plan: _Plan, index: int, height: int, width: int, rng: np.random.Generator) -> Any:
    """Compose sample ``index`` at ``height`` x ``width``: texture crop + class colour + class stripes.

    Every full-image operation runs on contiguous single-channel planes or inside PIL, because
    numpy broadcasting over a trailing axis of 3 is several times slower (measured).
    """
    from PIL import Image, ImageChops

    spec = plan.spec
    side = plan.texture_side
    texture = _textures(spec.seed, side, spec.channels)[int(rng.integers(_TEXTURE_COUNT))]
    ch, cw = min(height, side), min(width, side)
    y0 = int(rng.integers(side - ch + 1))
    x0 = int(rng.integers(side - cw + 1))
    crop = texture.crop((x0, y0, x0 + cw, y0 + ch))
    label = spec.label_of(index)
    colour_low, angle, freq = _class_style(label, spec.classes, spec.channels)
    phase = float(rng.uniform(0, 2 * math.pi))
    yy = np.arange(ch, dtype=np.float32)[:, None] * np.float32(math.sin(angle) * freq)
    xx = np.arange(cw, dtype=np.float32)[None, :] * np.float32(math.cos(angle) * freq)
    # Stripes in [0, 2A] plus (colour - A) stay inside 0..255: no clipping pass needed.
    stripes = ((np.sin(yy + xx + np.float32(phase)) + 1) * _STRIPE_AMPLITUDE).astype(np.uint8)
    planes = [Image.fromarray(stripes + np.uint8(c)) for c in colour_low]
    pattern = planes[0] if spec.channels == 1 else Image.merge("RGB", planes)
    img = ImageChops.add(crop, pattern, 1.0, -128)  # saturating: texture is centred on 128
    if (ch, cw) != (height, width):
        img = img.resize((width, height), Image.BILINEAR)
    return img


def _encode(img: Any, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _target_bytes(spec: GenerationSpec, rng: np.random.Generator) -> float | None:
    """A log-normal draw whose mean is ``mean_bytes`` (so the dataset's mean lands on target)."""
    if spec.mean_bytes is None:
        return None
    s = spec.size_sigma
    return spec.mean_bytes * math.exp(s * float(rng.standard_normal()) - s * s / 2)


def _sample_shape_quality(plan: _Plan, rng: np.random.Generator) -> tuple[int, int, int]:
    """Height, width and JPEG quality of one sample, chosen to hit its drawn size."""
    spec = plan.spec
    target = _target_bytes(spec, rng)
    if spec.image_size is None:
        assert target is not None  # enforced by GenerationSpec
        pixels = max(target - plan.header_bytes, 64.0) / plan.bytes_per_pixel
        aspect = float(rng.choice((4 / 3, 4 / 3, 4 / 3, 3 / 2, 1.0, 3 / 4))) * float(rng.uniform(0.9, 1.1))  # width / height
        height = int(round(math.sqrt(pixels / aspect)))
        width = int(round(height * aspect))
        height = min(max(height, _MIN_SIDE), _MAX_SIDE)
        width = min(max(width, _MIN_SIDE), _MAX_SIDE)
        return height, width, spec.quality
    height, width = spec.image_size
    if target is None or plan.quality_curve is None:
        return height, width, spec.quality
    sizes, qualities = plan.quality_curve
    quality = int(round(float(np.interp(target, sizes, qualities))))
    return height, width, min(max(quality, 1), 100)


def _make_sample(plan: _Plan, index: int) -> bytes:
    """The JPEG bytes of sample ``index``; depends only on (spec, index), not on which process runs it."""
    rng = np.random.default_rng((plan.spec.seed, 1, index))
    height, width, quality = _sample_shape_quality(plan, rng)
    return _encode(_render(plan, index, height, width, rng), quality)


def _make_chunk(plan: _Plan, indices: Sequence[int]) -> list[tuple[int, bytes, str]]:
    out = []
    for index in indices:
        data = _make_sample(plan, index)
        out.append((index, data, checksum(data)))
    return out


# ----------------------------------------------------------------------------------------------
# Calibration (in the calling process, deterministic)


def _calibrate(spec: GenerationSpec) -> _Plan:
    """Measure bytes per pixel (variable sizes) or size per quality (fixed shapes) on a few renders."""
    base = _Plan(spec, 512, 0.5, 600.0, None)
    rng = np.random.default_rng((spec.seed, 2))
    probe_labels = [spec.label_of(i) for i in np.linspace(0, spec.samples - 1, 6).astype(int)]
    if spec.image_size is None:
        assert spec.mean_bytes is not None
        tiny = _encode(_render(replace(base, texture_side=64), 0, _MIN_SIDE, _MIN_SIDE, rng), spec.quality)
        header = float(len(tiny))
        # Largest side at the 97.5th size percentile decides the texture size (powers of two).
        hi_bytes = spec.mean_bytes * math.exp(2 * spec.size_sigma)
        hi_side = math.sqrt(max(hi_bytes - header, 64.0) / base.bytes_per_pixel * 1.5)
        side = 512
        while side < min(hi_side, 2048):
            side *= 2
        plan = replace(base, texture_side=side, header_bytes=header)
        pixels = max(spec.mean_bytes - header, 64.0) / plan.bytes_per_pixel
        h = min(max(int(math.sqrt(pixels * 3 / 4)), _MIN_SIDE), _MAX_SIDE)
        w = min(max(int(h * 4 / 3), _MIN_SIDE), _MAX_SIDE)
        total = 0.0
        for i in probe_labels:
            total += len(_encode(_render(plan, i * spec.samples // spec.classes, h, w, rng), spec.quality)) - header
        return replace(plan, bytes_per_pixel=max(total / len(probe_labels) / (h * w), 1e-3))
    h, w = spec.image_size
    side = 512
    while side < min(max(h, w), 2048):
        side *= 2
    plan = replace(base, texture_side=side)
    if spec.mean_bytes is None:
        return plan
    renders = [_render(plan, label * spec.samples // spec.classes, h, w, rng) for label in probe_labels[:4]]
    qualities = (5, 15, 30, 50, 70, 80, 90, 95, 98, 100)
    sizes = [sum(len(_encode(img, q)) for img in renders) / len(renders) for q in qualities]
    # Sizes rise with quality; keep the curve strictly increasing for interpolation.
    for k in range(1, len(sizes)):
        sizes[k] = max(sizes[k], sizes[k - 1] + 1e-6)
    return replace(plan, quality_curve=(tuple(sizes), tuple(float(q) for q in qualities)))


# ----------------------------------------------------------------------------------------------
# Writing


def _work_order(spec: GenerationSpec) -> list[int]:
    """Order samples are generated and written in: index order, or the shard order when sharding."""
    if spec.layout == "files":
        return list(range(spec.samples))
    # Shards mix classes: a seeded permutation, so streaming a few shards still sees every class.
    return [int(i) for i in np.random.default_rng((spec.seed, 3)).permutation(spec.samples)]


def _results(plan: _Plan, order: list[int], workers: int) -> Iterator[tuple[int, bytes, str]]:
    """Generated samples in ``order``, in this process or spread over a process pool."""
    chunks = [order[i : i + _CHUNK] for i in range(0, len(order), _CHUNK)]
    if workers <= 1:
        for chunk in chunks:
            yield from _make_chunk(plan, chunk)
        return
    # NOTE: fork, because forkserver and spawn re-import the caller's __main__ (an unguarded
    # script would then fail) and cost ~0.5 s. Fork is safe here although the caller may hold
    # threads (fsspec's event loop, rich's refresher): the children run only numpy, PIL and
    # hashlib, and touch no lock, client or loop inherited from the parent.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        for chunk_result in pool.map(_make_chunk, [plan] * len(chunks), chunks):
            yield from chunk_result


class _ShardWriter:
    """Writes WebDataset tar shards with reproducible bytes (fixed mtime, owner and mode)."""

    def __init__(self, root: Path, shard_samples: int) -> None:
        self.root = root
        self.shard_samples = shard_samples
        self.entries: list[ShardEntry] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def add(self, index: int, label: int, data: bytes, width: int) -> None:
        if self._tar is None:
            self._path = self.root / shard_key(len(self.entries))
            self._tar = tarfile.open(self._path, "w", format=tarfile.USTAR_FORMAT)
            self._count = 0
        stem = f"{index:0{width}d}"
        for name, payload in ((f"{stem}.jpg", data), (f"{stem}.cls", str(label).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = 0
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(payload))
        self._count += 1
        if self._count >= self.shard_samples:
            self.close()

    def close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        data = self._path.read_bytes()
        key = self._path.relative_to(self.root).as_posix()
        self.entries.append(ShardEntry(key=key, size_bytes=len(data), sample_count=self._count, sha256=checksum(data)))


def _prepare_dir(root: Path, overwrite: bool) -> None:
    """Create ``root``, or clear a previous generated dataset there when ``overwrite`` is set."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a directory")
    if not root.exists() or not any(root.iterdir()):
        root.mkdir(parents=True, exist_ok=True)
        return
    if not (root / MANIFEST_NAME).exists():
        raise UsageError(f"{root} is not empty and holds no delibench dataset", hint="choose a new or empty directory")
    if not overwrite:
        raise UsageError(f"{root} already holds a dataset", hint="pass --force to replace it, or choose another directory")
    old = read_manifest(str(root))
    (root / MANIFEST_NAME).unlink()  # first, so an interrupted replacement leaves no stale manifest
    for entry in (*old.samples, *old.shards):
        (root / entry.key).unlink(missing_ok=True)
    for sub in sorted(root.iterdir()):
        # "shards": the folder datasets made before shards moved to the root kept them in.
        if sub.is_dir() and (sub.name.startswith("class_") or sub.name == "shards") and not any(sub.iterdir()):
            sub.rmdir()


def _default_workers(samples: int) -> int:
    if samples < 200:  # a process pool's start-up costs more than it saves
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def make_dataset(
    out_dir: str | os.PathLike[str],
    *,
    samples: int = 1000,
    classes: int = 10,
    preset: str = "imagenet",
    image_size: tuple[int, int] | None = None,
    mean_bytes: int | None = None,
    size_sigma: float = 0.5,
    quality: int | None = None,
    layout: str = "files",
    shard_samples: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Generate a synthetic JPEG image-classification dataset in ``out_dir`` and write its manifest.

    Args:
        out_dir: Local directory; created if missing. Must be empty or hold a previous dataset
            (replaced only with ``overwrite``).
        samples: Number of images.
        classes: Number of classes.
        preset: ``imagenet`` (variable shapes, ~110 KB), ``cifar`` (32x32 RGB) or ``mnist`` (28x28 grey).
        image_size: Fixed ``(height, width)``; ``None`` keeps the preset's (variable for imagenet).
        mean_bytes: Target mean file size; ``None`` keeps the preset's. With a fixed shape it is
            reached by choosing the JPEG quality, within what that shape allows.
        size_sigma: Spread of the log-normal size distribution (ImageNet's is about 0.5).
        quality: JPEG quality override for variable-size images or untargeted fixed shapes.
        layout: ``files`` (``class_000/000123.jpg``), ``shards`` (WebDataset tars ``shard-000000.tar``
            at the root) or ``both`` (an ImageFolder root with the shards as files beside the class
            folders, which ImageFolder skips).
        shard_samples: Samples per shard.
        seed: Same seed and arguments give byte-identical files.
        workers: Generator processes; ``None`` picks one per CPU for large datasets.
        overwrite: Replace a dataset already in ``out_dir``.
        progress: ``progress(done, total)`` callback, called in this process.

    Returns:
        The manifest written at ``out_dir/_delibench_manifest.json``. With ``layout="shards"`` the
        sample keys name the would-be files; the objects live in the shards only.

    Raises:
        UsageError: Unknown preset or layout, out-of-range values, or a non-empty target directory.
    """
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}", hint=f"use one of: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    fixed = image_size if image_size is not None else base.image_size
    spec = GenerationSpec(
        samples=samples,
        classes=classes,
        image_size=tuple(fixed) if fixed is not None else None,  # type: ignore[arg-type]
        channels=base.channels,
        # An explicit shape without an explicit size keeps the quality fixed instead of steering it.
        mean_bytes=mean_bytes if mean_bytes is not None else (None if image_size is not None else base.mean_bytes),
        size_sigma=size_sigma,
        quality=quality if quality is not None else base.quality,
        layout=layout,
        shard_samples=shard_samples,
        seed=seed,
    )
    root = Path(out_dir).expanduser().resolve()
    _prepare_dir(root, overwrite)
    plan = _calibrate(spec)
    order = _work_order(spec)
    n_workers = _default_workers(samples) if workers is None else max(1, workers)

    entries: dict[int, SampleEntry] = {}
    shards = _ShardWriter(root, spec.shard_samples) if layout in ("shards", "both") else None
    index_width = max(6, len(str(samples - 1)))
    made_dirs: set[str] = set()
    for done, (index, data, digest) in enumerate(_results(plan, order, n_workers), start=1):
        label = spec.label_of(index)
        key = sample_key(index, label, samples, classes)
        if layout in ("files", "both"):
            folder = key.rsplit("/", 1)[0]
            if folder not in made_dirs:
                (root / folder).mkdir(parents=True, exist_ok=True)
                made_dirs.add(folder)
            (root / key).write_bytes(data)
        if shards is not None:
            shards.add(index, label, data, index_width)
        entries[index] = SampleEntry(key=key, size_bytes=len(data), label=label, sha256=digest)
        if progress is not None:
            progress(done, samples)
    if shards is not None:
        shards.close()
    cw = max(3, len(str(classes - 1)))
    manifest = Manifest(
        samples=tuple(entries[i] for i in range(samples)),
        classes=tuple(f"class_{c:0{cw}d}" for c in range(classes)),
        shards=tuple(shards.entries) if shards is not None else (),
        source="generated",
        image_size=spec.image_size,
        seed=seed,
    )
    write_manifest(manifest, str(root))
    return manifest
