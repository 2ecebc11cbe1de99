"""Start a geo job on torchrun's launcher: one elastic node group per region, c10d rendezvous.

Every geo job is a ``torch.distributed`` job started through ``torch.distributed.run`` (torchrun):
one agent per region (a node group; ``--nproc-per-node`` = the region's workers), all joining one
c10d rendezvous hosted by the first region's agent (``--rdzv-conf is_host=1`` there), each bound to
its region's own address (``--local-addr``) with gloo on its region's interface
(``GLOO_SOCKET_IFNAME``). The workers are ``python -m delibench geo worker`` (the CLI reads
torchrun's variables and hands them to :func:`delibench.geo.train.run_worker`).

Elasticity is torchrun's own: ``--nnodes MIN:MAX`` and ``--max-restarts``. When a worker dies, its
agent restarts its node group and every agent re-forms the group; when an agent (a region) joins,
the running agents see a node waiting and restart their workers into the larger world. Either way
the workers of the new attempt load the last complete checkpoint (every rank writes its own model
and strategy state every ``checkpoint_every`` steps; :func:`delibench.geo.train.run_worker` says
what is restored when the world is the same and what when it changed), so a failure costs at most
one checkpoint interval of steps; each restart is logged with the steps it lost. (torchft, which keeps the healthy replicas stepping
instead of restarting them, would lose less, but it wants a lighthouse server and replica groups
that do not map onto a region's plain DDP; the checkpoint interval bounds the loss here.)

:func:`region_commands` prints the exact ``torchrun`` command for each region's host (a region can
be another machine); :class:`LocalJob` starts the same agents on this machine, inside one network
namespace per region when the links are real (:mod:`delibench.geo.links`), over loopback with the
communication-level WAN model otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delibench.errors import RuntimeFailure, UsageError
from delibench.geo.links import LINK_MODES, NAMESPACE_EMULATION, NamespaceWan, RegionHost, namespace_support
from delibench.geo.regions import RegionsConfig
from delibench.geo.sync import EMULATION
from delibench.geo.train import GeoResult, GeoRunSpec, aggregate_ranks

__all__ = ["LaunchResult", "LocalJob", "RDZV_PORT", "launch_local", "region_commands", "resolve_links", "torchrun_argv", "write_job"]

#: The c10d rendezvous port on the store host.
RDZV_PORT = 29431
_RDZV_CONF = "join_timeout=120,last_call_timeout=1,close_timeout=10,keep_alive_interval=1,keep_alive_max_attempt=5"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def torchrun_argv(
    *,
    region: str,
    nproc: int,
    node_rank: int,
    nnodes: str,
    endpoint: str,
    local_addr: str,
    is_host: bool,
    run_id: str,
    job_dir: str,
    max_restarts: int = 3,
    python: str = sys.executable,
) -> list[str]:
    """The ``torchrun`` command line of one region's agent (``python -m torch.distributed.run ...``).

    ``node_rank`` is the region's index (torchrun ignores it under c10d, which numbers node groups
    itself; the regions of the ranks are gathered at start-up, so nothing depends on it).
    """
    conf = _RDZV_CONF + (",is_host=1" if is_host else ",is_host=0")
    return [
        python, "-m", "torch.distributed.run",
        "--nnodes", nnodes,
        "--nproc-per-node", str(nproc),
        "--node-rank", str(node_rank),
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", endpoint,
        "--rdzv-id", run_id,
        "--rdzv-conf", conf,
        "--local-addr", local_addr,
        "--max-restarts", str(max_restarts),
        "--monitor-interval", "0.2",
        "-m", "delibench", "geo", "worker", "--region", region, "--job-dir", job_dir,
    ]  # fmt: skip


def region_commands(
    spec: GeoRunSpec, hosts: dict[str, RegionHost], *, job_dir: str, run_id: str, nnodes: str | None = None, max_restarts: int = 3, python: str = "python", port: int = RDZV_PORT
) -> list[tuple[str, list[str], dict[str, str]]]:
    """``(region, argv, extra environment)`` of every region's agent, the first region hosting the rendezvous."""
    first = spec.workers[0][0]
    endpoint = f"{hosts[first].address}:{port}"
    n = len(spec.workers)
    out = []
    for index, (region, nproc) in enumerate(spec.workers):
        host = hosts[region]
        argv = torchrun_argv(
            region=region, nproc=nproc, node_rank=index, nnodes=nnodes or f"{n}:{n}", endpoint=endpoint, local_addr=host.address,
            is_host=region == first, run_id=run_id, job_dir=job_dir, max_restarts=max_restarts, python=python,
        )  # fmt: skip
        out.append((region, argv, agent_env(host)))
    return out


def agent_env(host: RegionHost) -> dict[str, str]:
    """What a region's agent needs in its environment on top of the host's own.

    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: with the shared store (PyTorch's default) the workers
    of every rendezvous round use one long-lived TCPStore without a per-round prefix, and after an
    elastic restart gloo read the previous round's (dead) peer addresses and hung in
    ``init_process_group`` (PyTorch 2.14); unshared, rank 0's worker hosts a fresh store each round.
    """
    return {"GLOO_SOCKET_IFNAME": host.ifname, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def write_job(job_dir: str, config: RegionsConfig, spec: GeoRunSpec, *, checkpoint_every: int, links: str) -> Path:
    """Write ``job_dir/job.pkl``, what every worker reads: regions, spec, checkpoint interval, link mode.

    ``links``: ``model`` (the workers emulate the WAN), ``namespace`` or ``real`` (the network is
    real: nothing is injected, bytes are still counted). Every host of a multi-machine run needs
    the file at the same path; restarts need the folder shared (every rank writes its checkpoint
    file under ``ckpt/`` there).
    """
    if links not in ("model", "namespace", "real"):
        raise UsageError(f"links must be model, namespace or real, got {links!r}")
    out = Path(job_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "job.pkl"
    path.write_bytes(pickle.dumps({"config": config, "spec": spec, "checkpoint_every": checkpoint_every, "links": links}))
    return path


def format_commands(commands: list[tuple[str, list[str], dict[str, str]]]) -> str:
    """The commands as shell lines, one per region host."""
    return "\n".join(f"# {region}\n" + " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(argv) for region, argv, env in commands)


def resolve_links(mode: str) -> tuple[str, str]:
    """``(namespace | model, why)`` for ``--links auto|namespace|model``.

    Raises:
        UsageError: Unknown mode, or ``namespace`` asked for where it cannot run.
    """
    if mode not in LINK_MODES:
        raise UsageError(f"unknown --links {mode!r}", hint=f"choose one of {', '.join(LINK_MODES)}")
    if mode == "model":
        return "model", "asked for"
    ok, why = namespace_support()
    if mode == "namespace" and not ok:
        raise UsageError(f"--links namespace: {why}", hint="use --links model (the communication-level model) or run as root")
    return ("namespace", "") if ok else ("model", why)


@dataclass(frozen=True, slots=True)
class LaunchResult:
    """A torchrun geo run: the measurements, how the WAN was emulated, and what elasticity cost.

    Attributes:
        result: The aggregated measurements of the final attempt's ranks.
        links: ``namespace`` (real bytes through namespaces) or ``model`` (communication-level model).
        events: One dict per restart: ``world_size``, ``regions``, ``resumed_at`` (the checkpoint's
            step), ``reached`` (steps done before the restart), ``lost_steps``.
        wire_bytes: Namespace mode: IP bytes the router carried per directed link (headers included).
        ranks: The final attempt's per-rank reports.
        commands: The shell line of every region's agent.
    """

    result: GeoResult
    links: str
    events: tuple[dict[str, Any], ...]
    wire_bytes: dict[str, int]
    ranks: tuple[dict[str, Any], ...]
    commands: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**self.result.to_dict(), "links": self.links, "events": list(self.events), "wire_bytes": self.wire_bytes, "launch": self.commands}


@dataclass
class LocalJob:
    """A geo job's torchrun agents on this machine (one per region), elastic, with their links.

    Args:
        config: Regions file.
        spec: What to train; ``spec.workers`` are the regions that start (more may join later,
            up to ``max_regions``).
        links: ``namespace`` or ``model`` (see :func:`resolve_links`).
        checkpoint_every: Every rank checkpoints its model and strategy state every this many steps (0: never).
        max_restarts: torchrun's ``--max-restarts`` per agent.
        max_regions: The rendezvous admits up to this many node groups (``--nnodes MIN:MAX``).
        min_regions: Training goes on with at least this many node groups (default: the regions
            that start); fewer lets a whole region leave (its agent killed) while the others go on.
        base_env: The agents' environment (the CLI passes its own); ``GLOO_SOCKET_IFNAME`` and
            ``OMP_NUM_THREADS`` are set on top.
        job_dir: Where the job file, checkpoints, progress, events and rank reports go (a temporary
            folder when omitted, removed by :meth:`close`).
        jitter_s: Namespace mode: uniform jitter on every packet's one-way delay.
        log: Receives the agents' merged output lines (``None``: discarded).
        copied: ``"home->reader"`` -> bytes of shards copied between buckets before the run
            (a plan's ``copy`` mode), priced with the run's data bytes.
    """

    config: RegionsConfig
    spec: GeoRunSpec
    links: str = "model"
    checkpoint_every: int = 10
    max_restarts: int = 3
    max_regions: int | None = None
    min_regions: int | None = None
    base_env: dict[str, str] = field(default_factory=dict)
    job_dir: str | None = None
    jitter_s: float = 0.0
    log: Any = None
    copied: dict[str, int] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: "geo-" + uuid.uuid4().hex[:8])
    wan: NamespaceWan | None = None
    hosts: dict[str, RegionHost] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    rdzv_port: int = 0
    gone: set[str] = field(default_factory=set)
    _tmp: Any = None

    def start(self) -> LocalJob:
        """Write the job file, build the links, start one agent per region. Stops everything on failure."""
        if self.links not in ("namespace", "model"):
            raise UsageError(f"links must be namespace or model, got {self.links!r}")
        if self.checkpoint_every < 0:
            raise UsageError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        for name, _ in self.spec.workers:
            self.config.region(name)
        if self.job_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="delibench-geo-")
            self.job_dir = self._tmp.name
        out = Path(self.job_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_job(str(out), self.config, self.spec, checkpoint_every=self.checkpoint_every, links=self.links)
        try:
            everyone = tuple(self.config.names) if self.max_regions else tuple(r for r, _ in self.spec.workers)
            if self.links == "namespace":
                self.wan = NamespaceWan(self.config, everyone, jitter_s=self.jitter_s).open()
                self.hosts = dict(self.wan.hosts)
            else:
                # One machine, no namespaces: every region's address is this host's loopback.
                self.hosts = {name: RegionHost(region=name, address="127.0.0.1", ifname="lo") for name in everyone}
            if not self.rdzv_port:
                self.rdzv_port = RDZV_PORT if self.wan is not None else _free_port(self.hosts[self.spec.workers[0][0]].address)
            for region, nproc in self.spec.workers:
                self.start_region(region, nproc)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def nnodes(self) -> str:
        """``MIN:MAX`` node groups: the regions that start, up to ``max_regions``."""
        n = len(self.spec.workers)
        low = min(n, self.min_regions or n)
        if low < 1:
            raise UsageError(f"--min-regions must be >= 1, got {self.min_regions}")
        return f"{low}:{max(n, self.max_regions or n)}"

    def commands(self) -> list[tuple[str, list[str], dict[str, str]]]:
        """Every starting region's agent command (what :meth:`start` runs, less the namespace prefix)."""
        return region_commands(
            self.spec, self.hosts, job_dir=str(self.job_dir), run_id=self.run_id, nnodes=self.nnodes, max_restarts=self.max_restarts, python=sys.executable, port=self.rdzv_port
        )

    def start_region(self, region: str, nproc: int) -> None:
        """Start ``region``'s agent with ``nproc`` workers (at start, or later: it joins the running job)."""
        if region in self.agents:
            raise UsageError(f"region {region} already runs")
        first = self.spec.workers[0][0]
        index = list(self.hosts).index(region)
        host = self.hosts[region]
        argv = torchrun_argv(
            region=region, nproc=nproc, node_rank=index, nnodes=self.nnodes, endpoint=f"{self.hosts[first].address}:{self.rdzv_port}",
            local_addr=host.address, is_host=region == first, run_id=self.run_id, job_dir=str(self.job_dir), max_restarts=self.max_restarts,
        )  # fmt: skip
        if self.wan is not None:
            argv = self.wan.exec_prefix(region) + argv
        env = {**self.base_env, **agent_env(host), "PYTHONUNBUFFERED": "1"}
        log = open(Path(str(self.job_dir), f"agent-{region}.log"), "ab")  # noqa: SIM115 (closed with the job)
        self.agents[region] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def progress(self) -> int:
        """Steps done so far (global rank 0's last report; 0 before the first)."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(Path(str(self.job_dir), "progress.json").read_text())["step"])
        return 0

    def wait_progress(self, step: int, timeout_s: float = 60.0) -> int:
        """Block until at least ``step`` steps are done; returns the step seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_agents()
            seen = self.progress()
            if seen >= step:
                return seen
            time.sleep(0.05)
        raise RuntimeFailure(f"geo run: step {step} not reached in {timeout_s:.0f} s (at {self.progress()})")

    def worker_pids(self) -> dict[int, tuple[int, str]]:
        """Global rank -> ``(pid, region)`` of the workers of the latest attempt that reported."""
        out = {}
        for path in Path(str(self.job_dir)).glob("pid-r*"):
            pid, _, region = path.read_text().partition(" ")
            out[int(path.name[5:])] = (int(pid), region)
        return out

    def kill_worker(self, rank: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the worker of global ``rank`` (its pid file); returns the pid."""
        pid, _ = self.worker_pids()[rank]
        os.kill(pid, sig)
        return pid

    def kill_region(self, region: str, sig: int = signal.SIGKILL) -> None:
        """Take a whole region out: ``sig`` to its agent, then to its workers (torchrun puts each in a session of its own)."""
        self.gone.add(region)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.agents[region].pid, sig)
        self._signal_workers(sig, region)

    def _signal_workers(self, sig: int, region: str | None = None) -> None:
        """``sig`` to every live worker (of ``region``) named by a pid file, checked to be a geo worker of this job."""
        for pid, where in self.worker_pids().values():
            if region is not None and where != region:
                continue
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"worker" in cmdline and str(self.job_dir).encode() in cmdline:
                    os.kill(pid, sig)

    def _check_agents(self) -> None:
        for region, proc in self.agents.items():
            if region in self.gone:
                continue
            code = proc.poll()
            if code not in (None, 0):
                raise RuntimeFailure(f"geo run: the torchrun agent of {region} failed (exit {code})", hint=f"see {self.job_dir}/agent-{region}.log: {self._tail(region)}")

    def _tail(self, region: str) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in Path(str(self.job_dir), f"agent-{region}.log").read_text(errors="replace").splitlines() if ln.strip()]
            # A worker's own one-line error first (``geo worker <region> rank <r>: error: ...``), then
            # any error line but torchrun's pointer to its docs ("traceback : To enable traceback see ...errors.html").
            worker = [ln for ln in lines if "geo worker" in ln and ": error: " in ln]
            errors = [ln for ln in lines if ("Error" in ln or "error" in ln) and "errors.html" not in ln]
            if worker:
                return worker[-1][worker[-1].index("geo worker") :][:500]
            return (errors or lines or [""])[-1][-300:]
        return ""

    def wait(self, timeout_s: float = 600.0) -> LaunchResult:
        """Wait for every agent to finish; collect the final attempt's reports.

        Raises:
            RuntimeFailure: An agent failed (its restarts exhausted) or the run exceeded ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for r, p in self.agents.items() if r not in self.gone):
            self._check_agents()
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"geo run exceeded its {timeout_s:.0f} s timeout; agents stopped")
            time.sleep(0.1)
        self._check_agents()
        return self.collect()

    def collect(self) -> LaunchResult:
        """The final attempt's reports, aggregated."""
        out = Path(str(self.job_dir))
        first = json.loads((out / "rank0.json").read_text())
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(first["world_size"])]
        events_path = out / "events.jsonl"
        events = tuple(json.loads(line) for line in events_path.read_text().splitlines()) if events_path.exists() else ()
        wire = self.wan.link_bytes() if self.wan is not None else {}
        result = aggregate(self.config, self.spec, ranks, emulation=NAMESPACE_EMULATION if self.links == "namespace" else EMULATION, wire_bytes=wire, copied=self.copied)
        return LaunchResult(result=result, links=self.links, events=events, wire_bytes=wire, ranks=tuple(ranks), commands=format_commands(self.commands()))

    def close(self) -> None:
        """Stop every agent (its whole session: the workers too), remove the namespaces, the temporary folder. Idempotent."""
        for proc in self.agents.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.agents.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
        if self.job_dir is not None and Path(self.job_dir).exists():
            self._signal_workers(signal.SIGKILL)  # any worker its killed agent left behind
        if self.wan is not None:
            self.wan.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalJob:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def aggregate(
    config: RegionsConfig, spec: GeoRunSpec, ranks: list[dict[str, Any]], *, emulation: str, wire_bytes: dict[str, int] | None = None, copied: dict[str, int] | None = None
) -> GeoResult:
    """One :class:`GeoResult` from the final attempt's rank reports (the workers that finished the run).

    Cross-region bytes are the communicator's exact count (the payload); in namespace mode the
    router's IP bytes are in :attr:`LaunchResult.wire_bytes`. The workers billed are those of
    the final attempt (an elastic run may have lost or gained regions).
    """
    workers: dict[str, int] = {}
    for r in ranks:
        workers[r["region"]] = workers.get(r["region"], 0) + 1
    return aggregate_ranks(config, spec, ranks, emulation=emulation, workers=workers, copied=copied)


def launch_local(
    config: RegionsConfig,
    spec: GeoRunSpec,
    *,
    links: str = "auto",
    checkpoint_every: int = 10,
    max_restarts: int = 3,
    base_env: dict[str, str] | None = None,
    job_dir: str | None = None,
    jitter_s: float = 0.0,
    timeout_s: float = 600.0,
    min_regions: int | None = None,
    max_regions: int | None = None,
    copied: dict[str, int] | None = None,
) -> LaunchResult:
    """Run ``spec`` on this machine under torchrun (one agent per region) and return the result.

    ``links``: ``auto`` (namespaces with real bytes where this process may create them, else the
    communication-level model), ``namespace`` or ``model``. ``copied``: bytes copied between
    buckets before the run, per ``"home->reader"`` (priced with the run's data).
    """
    mode, _ = resolve_links(links)
    job = LocalJob(
        config, spec, links=mode, checkpoint_every=checkpoint_every, max_restarts=max_restarts, base_env=dict(base_env or {}), job_dir=job_dir,
        jitter_s=jitter_s, min_regions=min_regions, max_regions=max_regions, copied=dict(copied or {}),
    )  # fmt: skip
    with job:
        return job.wait(timeout_s)
