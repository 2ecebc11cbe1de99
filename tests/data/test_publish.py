"""push / index / info against memory, local directories, SeaweedFS (S3) and fake-gcs-server (GCS)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from delibench.errors import RuntimeFailure, UsageError
from delibench.manifest import MANIFEST_NAME, Manifest, checksum, read_manifest
from delibench.storage import resolve, storage_options_from_env
from delibench.loaders import publish
from delibench.workloads.datagen import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """A small generated dataset with files and shards (shared, read-only)."""
    root = tmp_path_factory.mktemp("src") / "ds"
    return root, make_dataset(root, samples=36, classes=3, mean_bytes=12_000, layout="both", shard_samples=16, seed=3)


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16 + seed, 12), (seed * 20 % 256, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A hand-made ImageFolder tree with things index must skip."""
    root = tmp_path / "folder"
    layout = {"dogs/a.jpg": 1, "dogs/b.JPEG": 2, "cats/x.png": 3, "cats/sub/y.jpg": 4, "birds/z.webp": 5}
    for key, seed in layout.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if key.endswith(".png"):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8)).save(buf, "PNG")
            path.write_bytes(buf.getvalue())
        else:
            path.write_bytes(_jpeg(seed))
    (root / "top.jpg").write_bytes(_jpeg(9))  # not in a class folder
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / ".hidden.jpg").write_bytes(_jpeg(8))
    return root


def _assert_remote_matches(url: str, manifest: Manifest) -> None:
    """Every object at ``url`` (samples and shards) has the manifest's bytes; the manifest is there."""
    loc = resolve(url)
    fs = loc.filesystem()
    fs.invalidate_cache()
    assert read_manifest(url).samples == manifest.samples
    blobs = fs.cat([loc.child(s.key) for s in manifest.samples] + [loc.child(s.key) for s in manifest.shards])
    assert len(blobs) == len(manifest.samples) + len(manifest.shards)
    digests = {checksum(b) for b in blobs.values()}
    assert {s.sha256 for s in manifest.samples} | {s.sha256 for s in manifest.shards} == digests


def test_push_to_memory_round_trips_every_byte(dataset: tuple[Path, Manifest]) -> None:
    src, made = dataset
    progress: list[tuple[int, int, int]] = []
    pushed = publish.push(src, "memory://publish-test/ds", concurrency=4, progress=lambda *a: progress.append(a))
    assert pushed.samples == made.samples and pushed.shards == made.shards
    _assert_remote_matches("memory://publish-test/ds", made)
    total = len(made.samples) + len(made.shards)
    assert progress[-1] == (total, total, made.total_bytes + sum(s.size_bytes for s in made.shards))
    summary = publish.info("memory://publish-test/ds")
    assert (summary.samples, summary.classes, summary.shards, summary.seed) == (36, 3, 3, 3)
    assert summary.dataset_id == made.dataset_id and summary.total_bytes == made.total_bytes


def test_push_to_a_local_directory(dataset: tuple[Path, Manifest], tmp_path: Path) -> None:
    src, made = dataset
    publish.push(src, f"file://{tmp_path}/copy")
    for entry in made.samples:
        assert (tmp_path / "copy" / entry.key).read_bytes() == (src / entry.key).read_bytes()
    assert read_manifest(str(tmp_path / "copy")).dataset_id == made.dataset_id


def test_push_of_a_tree_without_manifest_lists_it_and_leaves_the_source_alone(image_folder: Path) -> None:
    manifest = publish.push(image_folder, "memory://publish-test/folder")
    assert manifest.source == "listed"
    assert manifest.classes == ("birds", "cats", "dogs")
    assert [(s.key, s.label) for s in manifest.samples] == [
        ("birds/z.webp", 0), ("cats/sub/y.jpg", 1), ("cats/x.png", 1), ("dogs/a.jpg", 2), ("dogs/b.JPEG", 2)
    ]
    assert not (image_folder / MANIFEST_NAME).exists()
    _assert_remote_matches("memory://publish-test/folder", manifest)


def test_index_of_an_image_folder_tree(image_folder: Path) -> None:
    manifest = publish.index(str(image_folder))
    assert read_manifest(str(image_folder)).samples == manifest.samples
    assert len(manifest) == 5 and manifest.source == "listed"
    for entry in manifest.samples:
        data = (image_folder / entry.key).read_bytes()
        assert (entry.size_bytes, entry.sha256) == (len(data), checksum(data))


def test_index_without_images_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(UsageError, match="no images found"):
        publish.index(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="directory not found"):
        publish.index(str(tmp_path / "missing"))


def test_a_failed_push_leaves_no_manifest(dataset: tuple[Path, Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    """Half-pushed data must not look complete, also when it replaces an earlier complete push."""
    src, _ = dataset
    url = "memory://publish-test/half"
    publish.push(src, url)
    fs = resolve(url).filesystem()
    assert fs.exists(resolve(url).child(MANIFEST_NAME))
    real_put = type(fs).put_file
    calls = {"n": 0}

    def failing_put(self, lpath, rpath, **kwargs):  # noqa: ANN001, ANN202 - mirrors fsspec's signature
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError("disk on fire")
        return real_put(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(type(fs), "put_file", failing_put)
    with pytest.raises(RuntimeFailure, match="disk on fire"):
        publish.push(src, url, concurrency=2)
    assert not fs.exists(resolve(url).child(MANIFEST_NAME))


def test_objects_missing_after_upload_are_caught_before_the_manifest(dataset: tuple[Path, Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = dataset
    url = "memory://publish-test/lossy"
    fs = resolve(url).filesystem()
    real_put = type(fs).put_file

    def lossy_put(self, lpath, rpath, **kwargs):  # noqa: ANN001, ANN202 - a store that drops one object
        if rpath.endswith("000005.jpg"):
            return None
        return real_put(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(type(fs), "put_file", lossy_put)
    with pytest.raises(RuntimeFailure, match=r"incomplete: 1 objects .*000005\.jpg"):
        publish.push(src, url)
    assert not fs.exists(resolve(url).child(MANIFEST_NAME))


def test_bad_inputs(dataset: tuple[Path, Manifest], tmp_path: Path) -> None:
    src, _ = dataset
    with pytest.raises(UsageError, match="source directory not found"):
        publish.push(tmp_path / "nope", "memory://x/y")
    with pytest.raises(UsageError, match="unsupported URL scheme"):
        publish.push(src, "ftp://x")
    with pytest.raises(UsageError, match="concurrency"):
        publish.push(src, "memory://x/y", concurrency=0)
    with pytest.raises(UsageError, match="no dataset manifest"):
        publish.info(str(tmp_path))
    broken = tmp_path / "broken"
    make_dataset(broken, samples=6, classes=2, mean_bytes=5_000)
    next(broken.rglob("*.jpg")).unlink()
    with pytest.raises(UsageError, match="incomplete"):
        publish.push(broken, "memory://x/broken")


@pytest.mark.parametrize("scheme", ["s3", "gs"])
@pytest.mark.parametrize("call", ["push", "index", "info"])
def test_unreachable_endpoint_fails_fast(dataset: tuple[Path, Manifest], call: str, scheme: str) -> None:
    src, _ = dataset
    options = storage_options_from_env(scheme, {"AWS_ENDPOINT_URL" if scheme == "s3" else "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"})
    url = f"{scheme}://nowhere-bucket/ds"
    start = time.perf_counter()
    with pytest.raises(RuntimeFailure, match=f"cannot reach the {scheme} endpoint http://127.0.0.1:9"):
        if call == "push":
            publish.push(src, url, storage_options=options)
        elif call == "index":
            publish.index(url, storage_options=options)
        else:
            publish.info(url, storage_options=options)
    # Client retries with backoff would take minutes; one refused connect takes milliseconds.
    assert time.perf_counter() - start < 20


@pytest.mark.s3
def test_push_to_seaweedfs_reads_back_identical_and_indexes_the_same(dataset: tuple[Path, Manifest], s3_bucket: str) -> None:
    src, made = dataset
    url = f"{s3_bucket}/imgs"
    publish.push(src, url, concurrency=8)
    _assert_remote_matches(url, made)
    summary = publish.info(url)
    assert (summary.samples, summary.shards, summary.dataset_id) == (36, 3, made.dataset_id)
    listed = publish.index(url)  # lists the bucket, reads every object, rewrites the manifest
    assert listed.samples == made.samples and listed.source == "listed"
    assert read_manifest(url).source == "listed"


@pytest.fixture
def botocore_clients(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every synchronous botocore client created from now on (s3fs's aiobotocore clients are not counted).

    Records through botocore's public ``Session.create_client``, which push's direct uploader
    calls and aiobotocore's ``AioSession`` overrides.
    """
    import botocore.session

    created: list = []
    real = botocore.session.Session.create_client

    def recording(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - wraps the real method
        client = real(self, *args, **kwargs)
        created.append(client)
        return client

    monkeypatch.setattr(botocore.session.Session, "create_client", recording)
    return created


@pytest.mark.s3
def test_s3_push_through_s3fs_and_a_failed_s3_push(dataset: tuple[Path, Manifest], s3_bucket: str, botocore_clients: list) -> None:
    """Options botocore cannot take fall back to s3fs; a failed upload leaves no manifest on S3 either."""
    src, made = dataset
    options = {"default_block_size": 5 * 2**20}  # an s3fs-only option: the s3fs upload path
    publish.push(src, f"{s3_bucket}/via-s3fs", storage_options=options)
    assert botocore_clients == []  # no direct botocore uploader: s3fs uploaded
    _assert_remote_matches(f"{s3_bucket}/via-s3fs", made)

    url = f"{s3_bucket}/failing"
    publish.push(src, url)
    assert len(botocore_clients) == 1  # plain options: the direct botocore uploader

    import botocore.session

    calls = {"n": 0}
    recording = botocore.session.Session.create_client

    def flaky_client(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - the 7th PutObject fails
        client = recording(self, *args, **kwargs)
        put_object = client.put_object

        def put(**params):  # noqa: ANN003, ANN202
            calls["n"] += 1
            if calls["n"] == 7:
                raise OSError("connection reset by peer")
            return put_object(**params)

        client.put_object = put
        return client

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(botocore.session.Session, "create_client", flaky_client)
        with pytest.raises(RuntimeFailure, match="connection reset"):
            publish.push(src, url, concurrency=2)
    assert calls["n"] >= 7  # the failure came from the direct uploader's PutObject
    with pytest.raises(UsageError, match="no dataset manifest"):
        read_manifest(url)


@pytest.mark.s3
def test_push_creates_a_missing_s3_bucket(image_folder: Path, s3_bucket: str) -> None:
    url = f"{s3_bucket}-made/ds"
    manifest = publish.push(image_folder, url)
    _assert_remote_matches(url, manifest)


@pytest.mark.gcs
def test_push_to_gcs_emulator_reads_back_identical(dataset: tuple[Path, Manifest], gcs_bucket: str) -> None:
    src, made = dataset
    url = f"{gcs_bucket}/imgs"
    publish.push(src, url, concurrency=8)
    _assert_remote_matches(url, made)
    assert publish.info(url).dataset_id == made.dataset_id
    assert publish.index(url).samples == made.samples


@pytest.mark.gcs
def test_push_creates_a_missing_gcs_bucket(image_folder: Path, gcs_bucket: str) -> None:
    url = f"{gcs_bucket}-made/ds"
    manifest = publish.push(image_folder, url)
    _assert_remote_matches(url, manifest)
