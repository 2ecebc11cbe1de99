"""Fixtures for end-to-end tests of ``delibench run/compare/demo``: a tiny dataset, CLI runners, process checks.

Everything is real: SeaweedFS (from the shared ``s3_server`` fixture), the link emulator, the CLI
(in-process through ``delibench.cli.app.main`` or as a subprocess, as a user would run it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

#: A tiny MNIST-like dataset: 128 grey 28x28 JPEGs (~1 KB each) in 4 classes; decodes in microseconds.
SAMPLES = 128
#: Arguments every run shares: the cheap workload, an emulated accelerator, small batches, one worker.
FAST = [
    "--workload", "mnist-cnn",
    "--compute", "emulated:20ms",
    "--batch-size", "16",
    "--num-workers", "1",
    "--warmup-steps", "1",
    "--no-diagnose",
    "--no-progress",
]


@dataclass
class CliResult:
    """What one CLI invocation returned."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as one JSON document."""
        return json.loads(self.out)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local synthetic dataset (with manifest), made once per session."""
    from delibench.workloads.datagen import make_dataset

    out = tmp_path_factory.mktemp("mnist") / "data"
    make_dataset(out, samples=SAMPLES, classes=4, preset="mnist", seed=3, workers=1)
    return out


@pytest.fixture
def s3_mnist(s3_bucket: str, mnist_dir: Path) -> str:
    """The tiny dataset pushed to a fresh SeaweedFS bucket (direct endpoint); returns its URL."""
    from delibench.loaders.publish import push

    url = f"{s3_bucket}/mnist"
    push(mnist_dir, url, concurrency=8)
    return url


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``delibench ARGS`` in this process (``delibench.cli.app.main``) and capture its output."""
    from delibench.cli.app import main

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def cli_env() -> dict[str, str]:
    """The environment for a ``delibench`` subprocess: this one, with a wide, plain console.

    ``DELIBENCH_TEST_SESSION`` (read by no delibench code) marks the processes this test session
    started, down to node services in their own sessions: see :func:`started_by_this_session`.
    """
    return dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb", DELIBENCH_TEST_SESSION=str(os.getpid()))


def rank_1_step_env(tmp_path: Path, at: int, action: str, **extra: str) -> dict[str, str]:
    """:func:`cli_env` for a ``--nproc`` run whose rank 1 runs ``action`` (Python statements, ``os`` and
    ``time`` imported) instead of its step number ``at``, counting from 0: a ``sitecustomize`` on
    ``PYTHONPATH`` every rank loads (the failure is injected into the real CLI, not a copy of it)."""
    body = textwrap.indent(textwrap.dedent(action).strip(), " " * 12)
    code = (
        "import os, time\n"
        'if os.environ.get("RANK") == "1":\n'
        "    from delibench.workloads.compute import TorchCompute\n"
        "    _step, _calls = TorchCompute.step, [0]\n\n"
        "    def step(self, batch):\n"
        f"        if _calls[0] == {at}:\n{body}\n"
        "        _calls[0] += 1\n"
        "        _step(self, batch)\n\n"
        "    TorchCompute.step = step\n"
    )
    folder = tmp_path / "inject"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(code)
    return dict(cli_env(), **extra, PYTHONPATH=os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))


def cpu_args() -> list[str]:
    """:data:`FAST` with the real CPU model step instead of an emulated one (DDP has gradients to all-reduce)."""
    args = list(FAST)
    args[args.index("emulated:20ms")] = "cpu"
    return args


def started_by_this_session(proc: Any) -> bool:
    """Whether a ``psutil.Process`` descends from a subprocess started with :func:`cli_env` by this test
    session (another test run or a user's job on the machine is not ours to count or kill)."""
    try:
        return proc.environ().get("DELIBENCH_TEST_SESSION") == str(os.getpid())
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


@pytest.fixture
def cli_process() -> Callable[..., CliResult]:
    """Run ``python -m delibench ARGS`` as a subprocess (as a user would) and capture its output."""

    def invoke(*args: str, timeout_s: float = 240) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "delibench", *map(str, args)],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=timeout_s,
            check=False,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return invoke


def descendants(pid: int | None = None) -> set[int]:
    """Live (non-zombie) descendants of ``pid`` (default: this process)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    alive = set()
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail when the test leaves a process behind that this process started (ranks, workers, servers).

    Server processes that session fixtures started before the test are excluded by taking the set of
    descendants before the test.
    """
    before = descendants()
    yield
    deadline_s = 10.0
    import time

    start = time.perf_counter()
    left = descendants() - before
    while left and time.perf_counter() - start < deadline_s:
        time.sleep(0.2)
        left = descendants() - before
    details = []
    for pid in left:
        try:
            details.append(" ".join(psutil.Process(pid).cmdline())[:200])
        except psutil.NoSuchProcess:
            continue
    assert not details, f"processes left behind: {details}"
