"""deli's node service (``scope=node``): exact partitions at world 2 and 4, one fetch per sample per
node, Belady over the union as the simulator predicts it, two nodes, two jobs, a rank that leaves
early, a service or starter that dies (a clear error, nothing left in ``/dev/shm``),
``fetch_processes=2`` (GETs in two fetch processes, the table in the service) as exact as one loop, and
a fetch process that dies: replaced with the epoch still exact, or beyond the restart bound a clear error.

The ranks of a "node" run as loaders in this process (threads), each with its own local rank; the
service they share is a real process started by local rank 0's loader.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any

import psutil
import pytest

from delibench.errors import RuntimeFailure, UsageError
from delibench.loaders.deli import DeliLoader
from delibench.loaders.node import NodeDeliLoader, leftover_segments
from delibench.loaders.sampler import epoch_order
from delibench.loaders.testing import Corpus, make_context, make_corpus

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """41 samples of random sizes (odd: DistributedSampler pads at world 2 and 4)."""
    return make_corpus(tmp_path_factory.mktemp("node-corpus"), samples=41)


@pytest.fixture(scope="module")
def even_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """200 samples of exactly 1000 bytes, so a byte budget is a sample count."""
    return make_corpus(tmp_path_factory.mktemp("node-even"), samples=200, min_bytes=1000, max_bytes=1000)


@pytest.fixture(autouse=True)
def no_segments_left():
    before = set(leftover_segments())
    yield
    deadline = time.perf_counter() + 10
    while set(leftover_segments()) - before and time.perf_counter() < deadline:
        time.sleep(0.1)
    assert not set(leftover_segments()) - before, leftover_segments()


def _job(corpus: Corpus, world: int, local_world: int, job: str | None = None, epochs: int = 3, **options: Any) -> list[Any]:
    """Every rank's deli loader (local rank 0 of each node first: it starts the node's service).

    Each job gets its own id: the n-th node-scope loader of a (job, local rank) meets the n-th
    service of its node, and these "ranks" share one process."""
    job = job or uuid.uuid4().hex
    loaders = []
    for rank in range(world):
        ctx = make_context(corpus, rank=rank, world_size=world, local_rank=rank % local_world, local_world_size=local_world,
                           node_rank=rank // local_world, job_id=job, epochs=epochs, num_workers=1)
        loaders.append(DeliLoader(ctx, **options))
    return loaders


def _run(loaders: list[Any], epochs: int, delay_s: dict[int, float] | None = None, stop_after: dict[int, int] | None = None,
         ) -> dict[tuple[int, int], list[tuple[int, str]]]:
    got: dict[tuple[int, int], list[tuple[int, str]]] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            for e in range((stop_after or {}).get(r, epochs)):
                out = got.setdefault((r, e), [])
                for batch in loaders[r].iter_epoch(e):
                    out.extend((int(i), x) for i, x in zip(batch.indices, batch.inputs))
                    time.sleep((delay_s or {}).get(r, 0.0))
            if stop_after and r in stop_after:
                loaders[r].close()  # leaves early
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(loaders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return got


def _check_exact(corpus: Corpus, got: dict[tuple[int, int], list[tuple[int, str]]], world: int) -> None:
    for (r, e), items in got.items():
        assert [i for i, _ in items] == epoch_order(len(corpus.manifest), e, 7, r, world), (r, e)
        assert all(x == corpus.expected(i) for i, x in items), (r, e)  # byte-identical (sha256 of the bytes)


def _close(loaders: list[Any]) -> None:
    for loader in reversed(loaders):  # local rank 0 last: it waits for the others, then stops the service
        loader.close()


def _fetch_processes(loader: Any) -> list[psutil.Process]:
    """The fetch processes of the service that ``loader`` (local rank 0) started."""
    service = psutil.Process(loader._proc.pid)
    return [p for p in service.children() if "--fetch" in p.cmdline()]


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_its_partition_exactly_and_the_node_fetches_each_sample_once(corpus: Corpus, world: int) -> None:
    loaders = _job(corpus, world, world, cache_size="1MiB")
    try:
        assert all(isinstance(loader, NodeDeliLoader) for loader in loaders)
        got = _run(loaders, 3)
        _check_exact(corpus, got, world)
        stats = [loader.stats() for loader in loaders]
        assert sum(s.requests_count for s in stats) == len(corpus.manifest)  # 3 epochs, one GET per sample
        assert sum(s.bytes_read_remote for s in stats) == sum(e.size_bytes for e in corpus.manifest.samples)
        assert sum(s.cache_misses for s in stats) == len(corpus.manifest)
    finally:
        _close(loaders)


def test_ranks_at_different_speeds_with_evictions_and_one_leaving_early(corpus: Corpus) -> None:
    loaders = _job(corpus, 2, 2, cache_size=8000, prefetch_depth=8)
    try:
        got = _run(loaders, 3, delay_s={1: 0.03}, stop_after={1: 1})
        _check_exact(corpus, got, 2)
        assert sorted(got) == [(0, 0), (0, 1), (0, 2), (1, 0)]
        assert loaders[0].stats().cache_peak_bytes <= 8000
    finally:
        _close(loaders)


def test_two_nodes_each_fetch_their_own_union_once(corpus: Corpus) -> None:
    loaders = _job(corpus, 4, 2, cache_size="1MiB")
    try:
        got = _run(loaders, 3)
        _check_exact(corpus, got, 4)
        n = len(corpus.manifest)
        for node in (0, 1):
            needed = {i for e in range(3) for r in (2 * node, 2 * node + 1) for i in epoch_order(n, e, 7, r, 4)}
            fetched = sum(loaders[r].stats().requests_count for r in (2 * node, 2 * node + 1))
            assert fetched == len(needed), node
        assert loaders[0].prefix != loaders[2].prefix  # one service per node
        # the scale model (``delibench scale``), replaying both nodes, predicts the measured 2-node GETs
        from delibench.tuning.scale import ScaleJob, predict_scale

        sizes = [s.size_bytes for s in corpus.manifest.samples]
        assert sum(sizes) <= 2**20  # the 1 MiB node cache holds the dataset
        job = ScaleJob(nodes=2, gpus_per_node=2, samples=n, sample_bytes=max(sizes), cache_size=2**20, epochs=3, seed=7, simulate_nodes=2)
        predicted = predict_scale(job, orders=("shuffle",), scopes=("node",)).cell("node", "shuffle").gets
        assert predicted == sum(loader.stats().requests_count for loader in loaders)
    finally:
        _close(loaders)


def test_two_jobs_on_one_node_do_not_collide(corpus: Corpus) -> None:
    a, b = _job(corpus, 2, 2, cache_size="1MiB"), _job(corpus, 2, 2, cache_size="1MiB")
    try:
        assert {x.prefix for x in a}.isdisjoint({x.prefix for x in b})
        got = _run(a + b, 2)  # four threads; ranks of a are 0-1, of b 2-3 in this numbering
        _check_exact(corpus, {k: v for k, v in got.items() if k[0] < 2}, 2)
        _check_exact(corpus, {(k[0] - 2, k[1]): v for k, v in got.items() if k[0] >= 2}, 2)
        assert sum(x.stats().requests_count for x in a) == len(corpus.manifest)
        assert sum(x.stats().requests_count for x in b) == len(corpus.manifest)
    finally:
        _close(a)
        _close(b)


def test_belady_hit_rate_is_the_simulators_over_the_union(even_corpus: Corpus) -> None:
    """A cache of 30 % of the dataset, 4 ranks: the service's hit rate (lookups that needed no GET)
    within 2 points of the simulator's Belady replay of the node's union with each rank's window
    (``tuning.scale.replay_node_cache(window=service_window(...))``, what the service does). The
    cache-only replay (window 0) is 5 points lower here: the windows let the cache keep
    (ranks - 1) x batch size more samples at each epoch's end, so this test tells the two apart."""
    from delibench.loaders.deli import DeliOptions
    from delibench.loaders.node import service_window
    from delibench.tuning.scale import replay_node_cache

    n, world, epochs, batch = len(even_corpus.manifest), 4, 3, 5
    budget = int(0.3 * n * 1000)
    loaders = _job(even_corpus, world, world, epochs=epochs, cache_size=budget, prefetch_depth=10)
    try:
        for e in range(epochs):  # the ranks in lockstep, batch by batch, as DDP steps keep them
            for batches in zip(*(loader.iter_epoch(e) for loader in loaders)):
                assert len(batches) == world
        stats = [loader.stats() for loader in loaders]
        hits, misses = sum(s.cache_hits for s in stats), sum(s.cache_misses for s in stats)
        measured = hits / (hits + misses)
        assert loaders[0].node_stats()["node"]["window"] == service_window(DeliOptions(prefetch_depth=10), batch) == 10
        orders = [[epoch_order(n, e, 7, r, world) for e in range(epochs + 1)] for r in range(world)]

        def replay(window: int, batch_size: int) -> float:
            sim_misses, lookups = replay_node_cache(orders, 1000, budget, "belady", window=window, batch_size=batch_size)
            return 1 - sum(sim_misses) / sum(lookups)

        simulated, cache_only = replay(10, batch), replay(0, 1)
        assert abs(measured - simulated) <= 0.02, (measured, simulated)
        assert simulated - cache_only > 0.04, (simulated, cache_only)  # the window matters at this size
        assert max(s.cache_peak_bytes for s in stats) <= budget
    finally:
        _close(loaders)


def test_a_batch_that_never_comes_is_a_clear_error_within_the_deadline(corpus: Corpus) -> None:
    """The bucket accepts connections and never answers: with node_deadline_s=2 the rank fails after
    about 2 s naming the batch and a sample it waits for, exits 1, and leaves no service and no segment."""
    import json
    import socket

    hole = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def swallow() -> None:  # accept and read, never answer
        hole.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = hole.accept()
                held.append(conn)
            except OSError:
                continue

    threading.Thread(target=swallow, daemon=True).start()
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{hole.getsockname()[1]}"},
               "config_kwargs": {"s3": {"addressing_style": "path"}}}
    script = textwrap.dedent(f"""
        import json, sys, time
        from delibench.loaders.deli import DeliLoader
        from delibench.loaders.testing import Corpus, make_context
        from delibench.manifest import read_manifest
        ctx = make_context(Corpus("s3://black-hole/data", read_manifest({corpus.url!r})), job_id="deadline", num_workers=0,
                           storage_options=json.loads(sys.argv[1]))
        with DeliLoader(ctx, scope="node", node_deadline_s="2s", retries=0) as loader:
            print("service", loader._proc.pid, flush=True)
            t0 = time.perf_counter()
            try:
                for batch in loader.iter_epoch(0):
                    pass
            finally:
                print("failed after", round(time.perf_counter() - t0, 1), flush=True)
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", script, json.dumps(options)], capture_output=True, text=True, timeout=90)
    finally:
        stop.set()
        hole.close()
        for conn in held:
            conn.close()
    assert proc.returncode == 1, proc.stderr[-2000:]
    first = corpus.manifest.samples[epoch_order(len(corpus.manifest), 0, 7, 0, 1)[0]].key
    assert "batch 0 of epoch 0 of local rank 0 not ready after 2 s" in proc.stderr and first in proc.stderr, proc.stderr[-2000:]
    service_pid = int(proc.stdout.split("service", 1)[1].split()[0])
    waited = float(proc.stdout.split("failed after", 1)[1].split()[0])
    assert 2.0 <= waited < 10.0, proc.stdout  # the deadline (a loaded host adds seconds), not the client's 60 s read timeout
    assert not psutil.pid_exists(service_pid) or psutil.Process(service_pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("fetch_processes,restarted", [(1, False), (2, False), (2, True)], ids=["one-loop", "fetchers", "replaced"])
def test_a_killed_service_is_a_clear_error_and_leaves_no_segment(corpus: Corpus, fetch_processes: int, restarted: bool) -> None:
    """SIGKILL the service mid-epoch: the rank fails naming it, and its fetch processes (a replacement
    of a killed one included, ``replaced``) see their socket's EOF and leave on their own."""
    loaders = _job(corpus, 2, 2, cache_size="1MiB", fetch_processes=fetch_processes)
    fetchers = _fetch_processes(loaders[0])
    assert len(fetchers) == (0 if fetch_processes == 1 else fetch_processes)
    try:
        it = loaders[1].iter_epoch(0)
        next(it)
        if restarted:
            fetchers[1].kill()
            fetchers[1].wait(10)
            _wait_for(loaders[0], "fetch_restarts", 1)
            fetchers.append(_fetch_process(loaders[0], 1))
        assert leftover_segments()
        loaders[0]._proc.send_signal(signal.SIGKILL)
        loaders[0]._proc.wait()
        with pytest.raises(RuntimeFailure, match="node service"):
            for _ in it:
                pass
    finally:
        _close(loaders)
    for p in fetchers:  # their socket to the service reached EOF: they left on their own
        p.wait(10)


def kill_the_starter(corpus: Corpus, options: str, epoch: int = 0, while_alive: Any = None) -> None:
    """Start a process whose deli loader (``options``: Python keyword arguments) starts a node service,
    and SIGKILL it once it holds a batch of ``epoch`` (after ``while_alive()``, if given); returns once
    the service has noticed and left."""
    script = textwrap.dedent(f"""
        import sys, time
        from delibench.loaders.testing import make_context, Corpus
        from delibench.manifest import read_manifest
        from delibench.loaders.deli import DeliLoader
        url = {corpus.url!r}
        ctx = make_context(Corpus(url, read_manifest(url)), job_id="starter-{uuid.uuid4().hex}", num_workers=0, epochs={epoch + 1})
        loader = DeliLoader(ctx, {options})
        for e in range({epoch + 1}):
            for batch in loader.iter_epoch(e):
                if e == {epoch}:
                    print("batch", flush=True)
                    time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "batch"
        services = [p for p in psutil.Process(proc.pid).children() if "delibench.loaders.node" in " ".join(p.cmdline())]
        assert len(services) == 1 and leftover_segments()
        if while_alive is not None:
            while_alive()
        proc.kill()
        proc.wait()
        services[0].wait(10)  # gone within the watch interval
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_service_leaves_with_its_starter(corpus: Corpus, tmp_path) -> None:
    """The process that started the service is SIGKILLed: the service notices, unlinks its arena, exits."""
    kill_the_starter(corpus, 'scope="node"')


def test_a_replaced_fetch_process_leaves_with_the_starter(corpus: Corpus) -> None:
    """fetch_processes=2, fetch process 2 SIGKILLed and replaced, then the starter SIGKILLed: the service
    stops both fetch processes, the replacement included, and nothing is left in /dev/shm."""
    left: list[psutil.Process] = []

    def fetchers() -> list[psutil.Process]:
        out = []
        for p in psutil.Process().children(recursive=True):
            try:
                if "--fetch" in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                continue
        return out

    def replace_one() -> None:
        first = fetchers()
        assert len(first) == 2, first
        victim = next(p for p in first if p.cmdline()[p.cmdline().index("--fetch") + 1] == "1")
        victim.kill()
        victim.wait(10)
        deadline = time.monotonic() + 30
        while len(now := fetchers()) < 2:
            assert time.monotonic() < deadline, "no replacement started"
            time.sleep(0.05)
        assert victim.pid not in {p.pid for p in now}
        left.extend(now)

    kill_the_starter(corpus, 'scope="node", fetch_processes=2', while_alive=replace_one)
    for p in left:
        p.wait(10)
        assert not psutil.pid_exists(p.pid)


def test_scope_option() -> None:
    corpus = make_corpus(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"node-opt-{os.getpid()}"), samples=4)
    two = make_context(corpus, rank=0, world_size=2, local_rank=0, local_world_size=2, job_id=uuid.uuid4().hex)
    one = make_context(corpus)
    with pytest.raises(UsageError, match="scope"):
        DeliLoader(one, scope="everywhere")
    for ctx, options, kind in ((one, {}, DeliLoader), (two, {"scope": "rank"}, DeliLoader),
                               (two, {"cache_tier": "disk", "disk_cache_size": "1MiB", "scope": "rank"}, DeliLoader)):
        loader = DeliLoader(ctx, **options)
        try:
            assert type(loader) is kind
        finally:
            loader.close()
    with pytest.raises(UsageError, match="job id"):
        DeliLoader(make_context(corpus, rank=0, world_size=2, local_rank=0, local_world_size=2))


@pytest.mark.parametrize("saved_by,resumed_by", [("node", "node"), ("rank", "node"), ("node", "rank")])
def test_resume_mid_epoch(corpus: Corpus, saved_by: str, resumed_by: str) -> None:
    """One resume logic (loaders/resume.py) serves both scopes: a state either saves resumes in either."""
    first = _job(corpus, 1, 1, epochs=2, scope=saved_by, cache_size="1MiB")[0]
    try:
        it = first.iter_epoch(0)
        seen = [int(i) for i in next(it).indices] + [int(i) for i in next(it).indices]
        state = first.state_dict()
        it.close()
    finally:
        first.close()
    second = _job(corpus, 1, 1, epochs=2, scope=resumed_by, cache_size="1MiB")[0]
    try:
        assert isinstance(first, NodeDeliLoader) == (saved_by == "node") and isinstance(second, NodeDeliLoader) == (resumed_by == "node")
        second.load_state_dict(state)
        rest = [int(i) for b in second.iter_epoch(0) for i in b.indices]
        assert seen + rest == epoch_order(len(corpus.manifest), 0, 7, 0, 1)
        assert second.state_dict()["epoch"] == 1 and second.state_dict()["samples_yielded"] == 0
    finally:
        second.close()


def test_fetch_processes_serve_every_partition_exactly_once_per_node(corpus: Corpus) -> None:
    """fetch_processes=2 at world 2: both processes GET, every rank's partition exact and byte-identical,
    one GET per sample per node (a cache bigger than the dataset), GET counts per rank summing to it."""
    loaders = _job(corpus, 2, 2, epochs=2, cache_size="1MiB", fetch_processes=2)
    try:
        fetchers = _fetch_processes(loaders[0])
        assert len(fetchers) == 2
        got = _run(loaders, 2)
        _check_exact(corpus, got, 2)
        stats = [loader.stats() for loader in loaders]
        assert sum(s.requests_count for s in stats) == len(corpus.manifest)
        assert sum(s.bytes_read_remote for s in stats) == sum(e.size_bytes for e in corpus.manifest.samples)
        assert sum(s.cache_misses for s in stats) == len(corpus.manifest)
        node = loaders[0].node_stats()["node"]
        assert node["node_requests"] == node["fetches"] == len(corpus.manifest)  # the fetch processes' own meters agree
        assert sum(node["fetch_processes"]) == len(corpus.manifest) and min(node["fetch_processes"]) > 0, node["fetch_processes"]
    finally:
        _close(loaders)
    for p in fetchers:
        p.wait(10)  # gone with the service


def _fetch_process(loader: Any, index: int) -> psutil.Process:
    """Fetch process ``index`` (0-based) of the service ``loader`` started, waiting for it to be there
    (a replacement is started by the service after the process it replaces was reaped)."""
    deadline = time.monotonic() + 30
    while True:
        live = []
        for p in psutil.Process(loader._proc.pid).children():
            try:
                line = p.cmdline()
                if "--fetch" in line and line[line.index("--fetch") + 1] == str(index) and p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p)
            except psutil.NoSuchProcess:
                continue
        if len(live) == 1:
            return live[0]
        assert time.monotonic() < deadline, live
        time.sleep(0.05)


def _wait_for(loader: Any, key: str, value: int) -> dict[str, Any]:
    """Poll the service's node stats until ``key`` reaches ``value`` (or fail after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        node = loader.node_stats()["node"]
        if node[key] >= value:
            return node
        assert time.monotonic() < deadline, (key, node[key], value)
        time.sleep(0.05)


def test_a_killed_fetch_process_is_replaced_and_the_epoch_stays_exact(corpus: Corpus) -> None:
    """Fetch process 2 of 2 is stopped (SIGSTOP) so work piles up in it, then SIGKILLed with work in
    flight, mid-epoch at world 2: the service reaps it, starts a replacement at the same index and
    re-sends the same samples into the same blocks; both epochs complete, every partition exact and
    byte-identical; one restart; each re-sent GET counted as a retry (rank 0's ``retries_count``),
    the per-rank GET counts still one per sample per node. The replacement leaves with the service."""
    loaders = _job(corpus, 2, 2, epochs=2, cache_size="1MiB", prefetch_depth=4, fetch_processes=2)
    service = psutil.Process(loaders[0]._proc.pid)
    victim = _fetch_process(loaders[0], 1)
    victim.suspend()  # it takes work and answers none
    problems: list[BaseException] = []

    def kill_with_work_in_flight() -> None:
        try:
            _wait_for_in_flight(loaders[0], 1)
            victim.kill()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            problems.append(exc)
            victim.kill()

    killer = threading.Thread(target=kill_with_work_in_flight)
    replacement: psutil.Process | None = None
    try:
        killer.start()
        got = _run(loaders, 2)
        killer.join(30)
        assert not problems, problems
        _check_exact(corpus, got, 2)
        assert sorted(got) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        replacement = _fetch_process(loaders[0], 1)
        assert replacement.pid != victim.pid
        node = loaders[0].node_stats()["node"]
        assert node["fetch_restarts"] == 1 and node["fetch_resent"] >= 1, node
        stats = [loader.stats() for loader in loaders]
        assert sum(s.cache_misses for s in stats) == node["fetches"] == len(corpus.manifest)  # one GET per sample per node
        assert node["node_requests"] == len(corpus.manifest)  # the attempts the live processes answered
        assert node["retries"] == node["fetch_resent"] == stats[0].retries_count  # each re-sent GET a retry
        assert [s.fetch_restarts for s in stats] == [1, 0]  # in the record, once per node (local rank 0)
        assert sum(node["fetch_processes"]) == len(corpus.manifest)  # the stopped one answered none, its replacement the re-sent
    finally:
        if victim.is_running():
            victim.kill()
        _close(loaders)
    service.wait(10)
    for p in (victim, replacement):
        assert p is not None
        p.wait(10)
        assert not psutil.pid_exists(p.pid)


def _wait_for_in_flight(loader: Any, index: int) -> None:
    deadline = time.monotonic() + 30
    while not loader.node_stats()["node"]["fetch_in_flight"][index]:
        assert time.monotonic() < deadline, "no work reached the stopped fetch process"
        time.sleep(0.02)


def test_a_fetch_process_killed_beyond_the_restart_bound_is_a_clear_error_and_leaves_nothing(corpus: Corpus) -> None:
    """SIGKILL fetch process 2 of 2, then each replacement: the first FETCH_RESTART_LIMIT deaths are
    replaced, the next one (well within the window) fails the rank's next batch naming the process,
    how it died and the restarts (not a hang); the service and every fetch process, replacements
    included, are gone after close, and nothing is left in /dev/shm (the autouse fixture)."""
    from delibench.loaders.node.config import FETCH_RESTART_LIMIT, FETCH_RESTART_WINDOW_S

    loaders = _job(corpus, 2, 2, epochs=1, cache_size="1MiB", prefetch_depth=4, fetch_processes=2)
    service = psutil.Process(loaders[0]._proc.pid)
    seen = list(_fetch_processes(loaders[0]))
    t0 = time.monotonic()
    try:
        it = loaders[1].iter_epoch(0)
        next(it)
        for restart in range(FETCH_RESTART_LIMIT + 1):
            victim = _fetch_process(loaders[0], 1)
            seen.append(victim)
            victim.kill()
            victim.wait(10)  # reaped by the service
            if restart < FETCH_RESTART_LIMIT:
                _wait_for(loaders[0], "fetch_restarts", restart + 1)
        assert time.monotonic() - t0 < FETCH_RESTART_WINDOW_S
        time.sleep(0.2)  # the service marks itself broken right after reaping the last one
        pattern = (rf"fetch process 2 of 2 \(pid {victim.pid}\) died \(killed by SIGKILL\) "
                   rf"after {FETCH_RESTART_LIMIT} restarts of fetch processes")
        with pytest.raises(RuntimeFailure, match=pattern):
            for _ in it:
                pass
    finally:
        _close(loaders)
    service.wait(10)
    for p in seen:  # the killed ones reaped by the service, the others stopped by it
        p.wait(10)
        assert not psutil.pid_exists(p.pid)


def test_fetch_processes_option() -> None:
    from delibench.loaders.deli import DeliOptions
    from delibench.loaders.node import fetch_process_count

    assert fetch_process_count(1, 8) == 1 and fetch_process_count(3, 8) == 3
    assert fetch_process_count("auto", 8, cpus=2) == 1
    assert fetch_process_count("auto", 8, cpus=96) == 16 and fetch_process_count("auto", 2, cpus=96) == 4
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(UsageError, match="fetch_processes"):
            DeliOptions(fetch_processes=bad)
