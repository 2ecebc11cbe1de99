"""The embedded cloud: object-store servers with link emulators in front, in-process or detached.

Two ways to run it:

* **In-process** (``Testbed.start(...)``, a context manager), for ``delibench demo``, benchmarks
  and tests: the servers are child processes, the link emulators run as threads of this process,
  and ``stop()`` ends everything.
* **Detached** (``Testbed.start(..., detached=True)``, used by ``delibench testbed up``): every
  part is its own process in its own session, and a JSON state file in the data directory records
  pids (with their start times, so a recycled pid is never killed), ports, the profile and log
  paths. ``Testbed.attach``, ``status`` and ``down`` work from later processes.

With the ``local`` profile there is nothing to emulate, so clients talk to the servers directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from delibench.errors import RuntimeFailure, UsageError
from delibench.storage import GCS_BUCKET_TYPE_PROBE, gcs_emulator_options, s3_endpoint_options
from delibench.testbed.link import LinkEmulator
from delibench.testbed.profiles import LinkProfile, get_profile
from delibench.testbed.servers import GcsEmulator, ManagedProcess, OnePortProcess, SeaweedServer, terminate_group

__all__ = [
    "DEFAULT_DIR",
    "SERVICES",
    "STATE_FILE",
    "LinkProcess",
    "ProcessRecord",
    "ProcessStatus",
    "Testbed",
    "TestbedState",
    "endpoint_storage_options",
    "read_state",
    "stop_detached",
    "testbed_status",
]

#: Where ``delibench testbed up`` keeps data and state unless ``--dir`` says otherwise.
DEFAULT_DIR = Path(".delibench") / "testbed"
#: Name of the state file inside the data directory.
STATE_FILE = "testbed.json"
#: Services a testbed can run.
SERVICES = ("s3", "gcs")
_STATE_VERSION = 1
_DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "delibench",
    "AWS_SECRET_ACCESS_KEY": "delibench-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One process a detached testbed started (enough to find and stop exactly it later)."""

    name: str
    pid: int
    create_time: float
    log_path: str
    sockets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """Whether a recorded process still runs, and if not, the end of its log."""

    name: str
    pid: int
    running: bool
    detail: str


@dataclass(frozen=True, slots=True)
class TestbedState:
    """What a testbed is: endpoints, profile and (when detached) its processes."""

    __test__ = False  # not a pytest test class

    data_dir: str
    profile: dict[str, Any]
    services: tuple[str, ...]
    s3_url: str | None = None
    s3_direct_url: str | None = None
    gcs_url: str | None = None
    gcs_direct_url: str | None = None
    processes: tuple[ProcessRecord, ...] = ()
    started_at: float = 0.0
    version: int = _STATE_VERSION

    @property
    def link_profile(self) -> LinkProfile:
        """The link profile in front of the servers."""
        return LinkProfile(**self.profile)

    def endpoint(self, protocol: str = "s3", *, direct: bool = False) -> str:
        """The endpoint of ``protocol`` (``s3`` or ``gs``): through the link, or ``direct``.

        Raises:
            UsageError: Unknown protocol, or this testbed runs no server for it.
        """
        service = _service_of(protocol)
        url = getattr(self, f"{service}_direct_url" if direct else f"{service}_url")
        if not url:
            raise UsageError(f"this testbed runs no {service.upper()} server", hint=f"start it with --services {service}")
        return str(url)

    def storage_options(self, protocol: str = "s3", *, direct: bool = False) -> dict[str, Any]:
        """fsspec storage options that reach this testbed's ``protocol`` store (shaped, or ``direct``)."""
        return endpoint_storage_options(protocol, self.endpoint(protocol, direct=direct))

    def env(self) -> dict[str, str]:
        """The environment variables a client needs to use this testbed (shaped endpoints)."""
        env = dict(_DUMMY_AWS)
        if self.s3_url:
            env["AWS_ENDPOINT_URL"] = self.s3_url
        if self.gcs_url:
            env["STORAGE_EMULATOR_HOST"] = self.gcs_url
            name, value = GCS_BUCKET_TYPE_PROBE
            env[name] = value
        env["DELIBENCH_LINK_PROFILE"] = str(self.profile.get("name", "local"))
        return env

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["services"] = list(self.services)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TestbedState:
        procs = tuple(ProcessRecord(**{**p, "sockets": tuple(p.get("sockets", ()))}) for p in data.get("processes", ()))
        return cls(**{**data, "services": tuple(data.get("services", ())), "processes": procs})


def _service_of(protocol: str) -> str:
    service = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
    if service is None:
        raise UsageError(f"unknown testbed protocol {protocol!r}", hint="use s3 or gs")
    return service


def endpoint_storage_options(protocol: str, endpoint_url: str) -> dict[str, Any]:
    """Storage options for a testbed endpoint of ``protocol``: endpoint, dummy keys and region as data.

    The testbed's servers accept any key; giving them here means no client needs ``AWS_*``
    variables in the environment.
    """
    if _service_of(protocol) == "gcs":
        return gcs_emulator_options(endpoint_url)
    options = s3_endpoint_options(endpoint_url)
    options["client_kwargs"] = {**options["client_kwargs"], "region_name": _DUMMY_AWS["AWS_REGION"]}
    return {**options, "key": _DUMMY_AWS["AWS_ACCESS_KEY_ID"], "secret": _DUMMY_AWS["AWS_SECRET_ACCESS_KEY"]}


class LinkProcess(OnePortProcess):
    """The link emulator (``python -m delibench.testbed.link``) as its own process, in front of ``upstream``.

    Its own process (and session), so its CPU work never takes a measured process's GIL: ``testbed up``
    runs one per service, and the lab one per extra profile. Start and stop it as any
    :class:`~delibench.testbed.servers.ManagedProcess`; its log is ``<data_dir>/<name>.log``.

    Args:
        data_dir: Directory for its log.
        upstream: ``host:port`` of the server it forwards to.
        profile: The link it emulates.
        name: Its name (and its log's); ``link`` unless given.
        port: Listen port on 127.0.0.1; a free one when not given.
    """

    def __init__(self, data_dir: str | os.PathLike[str], upstream: str, profile: LinkProfile, *, name: str = "link", port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self.name = name
        self.upstream = upstream
        self.profile = profile

    def command(self) -> list[str]:
        """``python -m delibench.testbed.link`` with the upstream, the profile and the port."""
        return [
            sys.executable,
            "-m",
            "delibench.testbed.link",
            "--upstream",
            self.upstream,
            "--profile-json",
            json.dumps(dataclasses.asdict(self.profile)),
            "--listen-port",
            str(self.port),
        ]

    def healthy(self) -> bool:
        """True when the emulator accepts a connection."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False


def _validate_services(services: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    items = [s.strip().lower() for s in (services.split(",") if isinstance(services, str) else services) if s.strip()]
    if not items:
        raise UsageError("no services given", hint=f"use one or more of: {', '.join(SERVICES)}")
    for item in items:
        if item not in SERVICES:
            raise UsageError(f"unknown service {item!r}", hint=f"use one or more of: {', '.join(SERVICES)}")
    return tuple(dict.fromkeys(items))


def _record(proc: ManagedProcess) -> ProcessRecord:
    import psutil

    assert proc.pid is not None
    return ProcessRecord(
        name=proc.name,
        pid=proc.pid,
        create_time=psutil.Process(proc.pid).create_time(),
        log_path=str(proc.log_path),
        sockets=tuple(str(s) for s in proc.socket_files()),
    )


def read_state(data_dir: str | os.PathLike[str] = DEFAULT_DIR) -> TestbedState | None:
    """The state of the detached testbed in ``data_dir``, or None when there is none.

    Raises:
        UsageError: The state file exists but cannot be read.
    """
    path = Path(data_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return TestbedState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"unreadable testbed state file {path}: {exc}", hint=f"remove {path} and start again") from exc


def _process_status(record: ProcessRecord) -> ProcessStatus:
    import psutil

    try:
        proc = psutil.Process(record.pid)
        same = abs(proc.create_time() - record.create_time) < 1.0
        running = same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        same, running = False, False
    if running:
        return ProcessStatus(record.name, record.pid, True, "running")
    tail = ""
    with contextlib.suppress(OSError):
        lines = Path(record.log_path).read_text(errors="replace").strip().splitlines()
        tail = lines[-1][-200:] if lines else ""
    detail = "exited" + (f"; last log line: {tail}" if tail else "") + f" (log: {record.log_path})"
    return ProcessStatus(record.name, record.pid, False, detail)


def testbed_status(data_dir: str | os.PathLike[str] = DEFAULT_DIR) -> tuple[TestbedState | None, list[ProcessStatus]]:
    """The detached testbed's state and whether each of its processes still runs."""
    state = read_state(data_dir)
    if state is None:
        return None, []
    return state, [_process_status(r) for r in state.processes]


testbed_status.__test__ = False  # type: ignore[attr-defined]


class Testbed:
    """A running local cloud: S3 (SeaweedFS) and/or GCS (fake-gcs-server) behind a link profile.

    Use ``Testbed.start`` (or ``with Testbed.start(...) as tb``) rather than the constructor.

    Example:
        >>> with Testbed.start("/tmp/tb", profile="cross-region") as tb:  # doctest: +SKIP
        ...     url = tb.make_bucket("data")          # "s3://data"
        ...     options = tb.storage_options("s3")    # fsspec options through the emulated link
    """

    __test__ = False

    def __init__(self, state: TestbedState, *, owned: list[ManagedProcess] | None = None, links: list[LinkEmulator] | None = None) -> None:
        self.state = state
        self._owned = owned or []
        self.links: list[LinkEmulator] = links or []
        self._lock: IO[bytes] | None = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        data_dir: str | os.PathLike[str] = DEFAULT_DIR,
        profile: str | LinkProfile = "local",
        services: str | tuple[str, ...] | list[str] = SERVICES,
        *,
        detached: bool = False,
        seed: int = 0,
        timeout_s: float = 90.0,
    ) -> Testbed:
        """Start the servers and, for a shaped profile, a link emulator in front of each.

        Args:
            data_dir: Directory for data, logs and (detached) the state file.
            profile: Link profile name or object.
            services: ``("s3", "gcs")``, either, or ``"s3,gcs"``.
            detached: Run every part as its own process that outlives this one (``testbed up``).
            seed: Seed of the emulators' fault and jitter draws.
            timeout_s: How long to wait for each server to answer.

        Raises:
            UsageError: Unknown profile or service.
            RuntimeFailure: A server did not start (the message carries its log tail).
        """
        link_profile = get_profile(profile)
        wanted = _validate_services(services)
        root = Path(data_dir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        _, running = testbed_status(root)
        if any(s.running for s in running):
            raise UsageError(
                f"a testbed is already running in {root}",
                hint="use Testbed.attach() / 'delibench testbed env', another directory, or 'delibench testbed down'",
            )
        lock = _lock_dir(root)
        owned: list[ManagedProcess] = []
        links: list[LinkEmulator] = []
        records: list[ProcessRecord] = []
        urls: dict[str, str | None] = {}
        try:
            for service in wanted:
                server: SeaweedServer | GcsEmulator
                server = SeaweedServer(root / "s3") if service == "s3" else GcsEmulator(root / "gcs")
                owned.append(server)
                server.start(timeout_s=timeout_s)
                if detached:
                    records.append(_record(server))
                direct = server.endpoint_url
                shaped = direct
                if link_profile.shaped:
                    upstream_port = int(direct.rsplit(":", 1)[1])
                    if detached:
                        link_proc = LinkProcess(root, f"127.0.0.1:{upstream_port}", link_profile, name=f"link-{service}")
                        owned.append(link_proc)
                        link_proc.start(timeout_s=30)
                        records.append(_record(link_proc))
                        shaped = link_proc.endpoint_url
                    else:
                        link = LinkEmulator("127.0.0.1", upstream_port, link_profile, seed=seed).start()
                        links.append(link)
                        shaped = link.endpoint_url
                urls[f"{service}_url"] = shaped
                urls[f"{service}_direct_url"] = direct
        except BaseException:
            for link in links:
                link.stop()
            for proc in reversed(owned):
                proc.stop()
            lock.close()
            raise
        state = TestbedState(
            data_dir=str(root),
            profile=dataclasses.asdict(link_profile),
            services=wanted,
            processes=tuple(records),
            started_at=time.time(),
            **urls,  # type: ignore[arg-type]
        )
        if detached:
            for proc in owned:
                proc.detach()
            _write_state(root, state)
            lock.close()  # from now on the state file says who owns the directory
            return cls(state)
        bed = cls(state, owned=owned, links=links)
        bed._lock = lock
        return bed

    @classmethod
    def attach(cls, data_dir: str | os.PathLike[str] = DEFAULT_DIR) -> Testbed:
        """The detached testbed recorded in ``data_dir``.

        Raises:
            UsageError: No testbed was started there.
        """
        state = read_state(data_dir)
        if state is None:
            raise UsageError(f"no testbed is running in {data_dir}", hint="start one with 'delibench testbed up'")
        return cls(state)

    # -- use -----------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment for clients: shaped ``AWS_ENDPOINT_URL``, dummy keys, ``STORAGE_EMULATOR_HOST``."""
        return self.state.env()

    @property
    def profile(self) -> LinkProfile:
        return self.state.link_profile

    @property
    def s3_url(self) -> str | None:
        """The S3 endpoint through the link (the direct one for ``local``)."""
        return self.state.s3_url

    @property
    def s3_direct_url(self) -> str | None:
        """The S3 endpoint without the link emulator (for uploads and probes)."""
        return self.state.s3_direct_url

    @property
    def gcs_url(self) -> str | None:
        return self.state.gcs_url

    @property
    def gcs_direct_url(self) -> str | None:
        return self.state.gcs_direct_url

    def storage_options(self, protocol: str = "s3", *, direct: bool = False) -> dict[str, Any]:
        """fsspec storage options that reach the ``protocol`` store through the link, or ``direct``.

        Raises:
            UsageError: Unknown protocol, or this testbed runs no server for it.
        """
        return self.state.storage_options(protocol, direct=direct)

    def server_pid(self, protocol: str = "s3") -> int | None:
        """The pid of the server process of ``protocol`` (None when not known here)."""
        name = {"s3": SeaweedServer.name, "gcs": GcsEmulator.name}[_service_of(protocol)]
        pids = [p.pid for p in self._owned if p.name == name] + [r.pid for r in self.state.processes if r.name == name]
        return next((pid for pid in pids if pid is not None), None)

    def make_bucket(self, name: str, protocol: str = "s3") -> str:
        """Create bucket ``name`` (direct, unshaped) if it does not exist; return its URL.

        Raises:
            UsageError: Bad name or the service is not running.
            RuntimeFailure: The server refused.
        """
        from delibench.storage import resolve

        protocol = "gs" if protocol in ("gs", "gcs") else protocol
        resolve(f"{protocol}://{name}")  # validates the bucket name
        if protocol == "s3":
            if not self.s3_direct_url:
                raise UsageError("this testbed runs no S3 server", hint="start it with --services s3")
            _create_s3_bucket(self.s3_direct_url, name)
        elif protocol == "gs":
            if not self.gcs_direct_url:
                raise UsageError("this testbed runs no GCS emulator", hint="start it with --services gcs")
            _create_gcs_bucket(self.gcs_direct_url, name)
        else:
            raise UsageError(f"unknown bucket protocol {protocol!r}", hint="use s3 or gs")
        return f"{protocol}://{name}"

    def stop(self) -> None:
        """Stop what this object started (in-process) or what the state file records (detached)."""
        for link in self.links:
            link.stop()
        self.links = []
        if self._owned:
            for proc in reversed(self._owned):
                proc.stop()
            self._owned = []
        elif self.state.processes:
            stop_detached(self.state.data_dir)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _lock_dir(root: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``root`` so two testbeds never share one SeaweedFS directory.

    Raises:
        UsageError: Another process holds it.
    """
    import fcntl

    handle = open(root / ".lock", "ab")  # noqa: SIM115 - held for the testbed's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise UsageError(f"another testbed is starting or running in {root}", hint="use another directory") from exc
    return handle


def _write_state(root: Path, state: TestbedState) -> None:
    path = root / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    tmp.replace(path)


def stop_detached(data_dir: str | os.PathLike[str] = DEFAULT_DIR, *, grace_s: float = 1.0) -> list[ProcessStatus]:
    """Stop exactly the processes the state file in ``data_dir`` records; remove their sockets.

    A pid whose start time differs from the recorded one belongs to someone else now and is left
    alone. Returns the status each process had before stopping. The data stays; the state file goes.
    """
    import psutil

    state, statuses = testbed_status(data_dir)
    if state is None:
        return []
    for record, status in zip(state.processes, statuses, strict=True):
        if status.running:
            proc = psutil.Process(record.pid)

            def alive(p: psutil.Process = proc) -> bool:
                try:
                    return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                except psutil.Error:
                    return False

            terminate_group(record.pid, grace_s=grace_s, is_alive=alive)
        for sock in record.sockets:
            with contextlib.suppress(OSError):
                Path(sock).unlink()
    with contextlib.suppress(OSError):
        (Path(data_dir) / STATE_FILE).unlink()
    return statuses


def _create_s3_bucket(endpoint_url: str, name: str) -> None:
    import botocore.session
    import botocore.exceptions

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=_DUMMY_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=_DUMMY_AWS["AWS_REGION"],
    )
    try:
        client.create_bucket(Bucket=name)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise RuntimeFailure(f"could not create bucket {name!r}: {code or exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise RuntimeFailure(f"could not create bucket {name!r}: {exc}") from exc


def _create_gcs_bucket(endpoint_url: str, name: str) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{endpoint_url}/storage/v1/b?project=delibench",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: already exists
            raise RuntimeFailure(f"could not create bucket {name!r}: HTTP {exc.code}") from exc
    except OSError as exc:
        raise RuntimeFailure(f"could not create bucket {name!r}: {exc}") from exc
