"""The lab: a local stand-in for "GPU VM + bucket across a link", stood up once for demo, bench and benchmarks.

A :class:`Lab` is a testbed (SeaweedFS and/or the GCS emulator, behind the link emulator with a
profile), the datasets generated and pushed to its buckets, and the storage options that reach
them, as data: nothing is written to ``os.environ``. Use it as a context manager::

    with Lab.start(workdir, profile="cross-region") as lab:
        data = lab.dataset(workdir / "data", "s3://my-bucket/imgs", samples=640)
        spec = lab.route().spec(data.url, workload="resnet50", loader=LoaderSpec("deli"))

A :class:`Route` is one way to the store: an endpoint with the link profile in front of it. Its
``storage_options`` go into ``RunSpec.storage_options``, ``push`` and ``read_manifest``; its
profile's name goes into ``RunSpec.link_profile``. ``lab.link(profile)`` adds another emulated
link in front of the same server (the bench measures several profiles over one store).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delibench.manifest import Manifest
from delibench.records import RunSpec
from delibench.testbed.profiles import LinkProfile, get_profile
from delibench.testbed.testbed import LinkProcess, Testbed, endpoint_storage_options

__all__ = ["Lab", "LabDataset", "Route"]


@dataclass(frozen=True)
class Route:
    """One way to reach the lab's store: an endpoint and the link profile in front of it.

    Attributes:
        protocol: ``s3`` or ``gs``.
        endpoint_url: Where clients connect.
        profile: The link profile between the client and the store (``local``: none).
        pid: The link emulator's own process, when it runs as one (the bench meters its CPU).
    """

    protocol: str
    endpoint_url: str
    profile: LinkProfile
    pid: int | None = None

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options for this endpoint (endpoint, dummy keys, region: no environment needed)."""
        return endpoint_storage_options(self.protocol, self.endpoint_url)

    def spec(self, dataset_url: str, **fields: Any) -> RunSpec:
        """A run spec reading ``dataset_url`` through this route (storage options and link profile filled in)."""
        return RunSpec(**{"dataset_url": dataset_url, "link_profile": self.profile.name, "storage_options": self.storage_options, **fields})


@dataclass(frozen=True)
class LabDataset:
    """A generated dataset: its local copy, its URL in the lab's store and its manifest."""

    local: Path
    url: str
    manifest: Manifest


class Lab:
    """A running testbed with the datasets pushed to it; stop it (or leave the ``with`` block) to end everything.

    Use :meth:`Lab.start` rather than the constructor.
    """

    def __init__(self, testbed: Testbed, workdir: Path) -> None:
        self.testbed = testbed
        self.workdir = workdir
        self._links: dict[tuple[str, str], tuple[LinkProcess, Route]] = {}

    @classmethod
    def start(
        cls,
        workdir: str | Path,
        profile: str | LinkProfile = "local",
        services: tuple[str, ...] = ("s3",),
        *,
        detached: bool = True,
        seed: int = 0,
    ) -> Lab:
        """Start the testbed in ``workdir / "testbed"``.

        Args:
            workdir: The lab's directory (testbed data, link logs).
            profile: Link profile in front of every server.
            services: ``("s3",)``, ``("gcs",)`` or both.
            detached: Run the servers and link emulators as their own processes, so the emulator's
                CPU work never takes the measured process's GIL.
            seed: Seed of the emulators' jitter and fault draws.

        Raises:
            UsageError: Unknown profile or service, or a testbed already runs there.
            RuntimeFailure: A server did not start.
        """
        root = Path(workdir).resolve()
        return cls(Testbed.start(root / "testbed", profile=profile, services=services, detached=detached, seed=seed), root)

    @property
    def profile(self) -> LinkProfile:
        """The testbed's link profile."""
        return self.testbed.profile

    def route(self, protocol: str = "s3", *, direct: bool = False) -> Route:
        """The testbed's own route to ``protocol``'s store: through its link, or ``direct`` (uploads, probes)."""
        url = self.testbed.state.endpoint(protocol, direct=direct)
        return Route(protocol, url, get_profile("local") if direct else self.profile)

    def server_pid(self, protocol: str = "s3") -> int | None:
        """The pid of the store's server process."""
        return self.testbed.server_pid(protocol)

    def make_bucket(self, name: str, protocol: str = "s3") -> str:
        """Create bucket ``name`` if needed; its URL (``s3://name``)."""
        return self.testbed.make_bucket(name, protocol)

    def dataset(
        self,
        local: Path,
        url: str,
        *,
        samples: int,
        reuse: bool = False,
        log: Callable[[str], None] | None = None,
        **make_options: Any,
    ) -> LabDataset:
        """Generate the dataset in ``local`` (unless it has a manifest) and push it to ``url`` (direct, unshaped).

        Args:
            local: Local directory of the dataset.
            url: Its URL in the lab's store; the bucket is created.
            samples: Samples to generate.
            reuse: Keep a copy already in the store (its manifest readable) instead of pushing again.
            log: Receives one line per stage.
            **make_options: More :func:`delibench.workloads.datagen.make_dataset` arguments.
        """
        from delibench.loaders.publish import push
        from delibench.manifest import MANIFEST_NAME, read_manifest
        from delibench.storage import protocol_of
        from delibench.workloads.datagen import make_dataset

        say = log or (lambda _line: None)
        if not (local / MANIFEST_NAME).exists():
            say(f"generating {samples} synthetic JPEG images in {local}")
            make_dataset(local, samples=samples, **make_options)
        protocol = protocol_of(url)
        self.make_bucket(url.split("://", 1)[1].split("/", 1)[0], protocol)
        options = self.route(protocol, direct=True).storage_options
        if reuse:
            try:
                return LabDataset(local, url, read_manifest(url, options))
            except Exception:  # noqa: BLE001 - not pushed to this store yet
                pass
        say(f"uploading the dataset to {url} (direct, unshaped)")
        return LabDataset(local, url, push(local, url, storage_options=options))

    def link(self, profile: str | LinkProfile, protocol: str = "s3") -> Route:
        """A route through another link emulator (its own process) in front of the same server, started on first use.

        Raises:
            RuntimeFailure: The emulator did not start (the message carries the tail of its log).
        """
        profile = get_profile(profile)
        key = (protocol, profile.name)
        if key not in self._links:
            upstream = self.testbed.state.endpoint(protocol, direct=True).split("//", 1)[1]
            proc = LinkProcess(self.workdir, upstream, profile, name=f"link-{profile.name.replace('+', '_')}")
            proc.start(timeout_s=30)
            self._links[key] = (proc, Route(protocol, proc.endpoint_url, profile, proc.pid))
        return self._links[key][1]

    def stop(self) -> None:
        """Stop the extra link emulators and the testbed."""
        for proc, _ in self._links.values():
            proc.stop()
        self._links.clear()
        self.testbed.stop()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
