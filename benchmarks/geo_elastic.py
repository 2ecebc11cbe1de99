"""Geo elasticity benchmark: a worker SIGKILLed mid-run, a region joining mid-run, progress lost per event.

Every job is the real thing ``delibench geo run`` starts: one torchrun agent per region (elastic c10d
rendezvous, ``--max-restarts``), every rank checkpointing its model and strategy state every
``--checkpoint-every`` steps into the job folder, rank 0 appending each restart to ``events.jsonl``
(steps reached, the checkpoint step resumed at, steps lost, the restore rule). Regions are on this
machine over loopback with the communication-level WAN model (``--links model``: each exchange waits
rtt/2 + chunk/bandwidth of the ``cross-region`` profile, 70 ms RTT, 100 MB/s); each region has one
worker with an A100's emulated step time (40 ms, a per-step sleep). The task is ``cnn-jpeg``: the
small CNN of ``geo/task.py`` on the synthetic 10-class JPEG images, each region reading its own
class-skewed shard through the deli loader from local files (no bucket: the testbed's SeaweedFS
servers would add tens of seconds of start-up and CPU on a 2-core box without changing what is
measured here, which is the restart); rank 0 evaluates the final model on a held-out split.

(a) Worker killed. Three regions, model averaging (MA, H = ``--period``). The same job runs twice,
    one after the other: uninterrupted, then with region ``us-west``'s worker SIGKILLed (its pid file
    ``pid-r<rank>`` in the job folder) once rank 0 reports step ``--kill-at``. torchrun restarts the
    group; every rank resumes from the last complete checkpoint (its own model, momentum and loader
    position: restore ``exact``) and the job finishes its steps. Printed: step reached, step resumed
    at, steps lost, seconds lost (end-to-end wall of the killed run minus the uninterrupted run's),
    final held-out loss and accuracy of both.
(b) Region joins. Regions ``us-east`` and ``us-west`` start (``--nnodes 2:3``); once rank 0 reports
    step ``--join-at``, ``eu-west``'s agent starts (what the command ``geo run --max-regions 3`` prints
    does on a third host); the running agents see a node waiting and re-form a world of 3 from the
    last checkpoint (another world: the saved ranks' mean model, fresh strategy state). Printed: the
    step it joined at, the steps lost to the re-rendezvous, the steps the new region contributed,
    its cross-region bytes, and the final held-out loss/accuracy against the same two regions
    trained without the join, overall and on each region's own classes (rank 0's saved final
    parameters on the held-out images of those classes). Its shard holds mostly classes the other
    two regions rarely see (eu-west's 7-9), so the join shows in the accuracy on those. The step it
    joins at is torchrun's timing (agent start, rendezvous), not a setting: 40-80 in runs so far.

Settings (both parts, every run alike): MA H=4, batch 16, SGD lr 0.03 with momentum 0.9, seed 0; 200
training images per region (skew 0.8), 200 held out (20 per class: a constant prediction scores 0.100).
lr 0.1 (an effective step of 1.0 with momentum 0.9) was at the edge of stability for this CNN: the
2-region run without the join (seed 0) diverged at step ~30 (training loss up to 2.7, then flat at
~2.0, the entropy of the two shards' class prior: a dead network predicting one class, held-out
accuracy 0.100 with or without the join), while the same 2 regions at seed 1 reached 0.27 and the
3 regions oscillated (held-out 0.14-0.28 between evaluations). At lr 0.03 over 240 steps without
elasticity (``run_geo``, eval every 10 steps): 2 regions 0.355 (seed 0) / 0.375 (seed 1), 3 regions
0.445; no divergence.

    .venv/bin/python benchmarks/geo_elastic.py --json benchmarks/results/geo-elastic.json --txt benchmarks/results/geo-elastic.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results_io import publish

from delibench.geo.launch import LaunchResult, LocalJob
from delibench.geo.regions import parse_regions
from delibench.geo.train import GeoRunSpec

REGION_NAMES = ("us-east", "us-west", "eu-west")
STEP_S = 0.040
RTT_S = 0.070
BANDWIDTH_BYTES_PER_S = 100e6


def regions_config() -> Any:
    """Three regions, one emulated A100 each ($3.67/h), every pair over the cross-region link ($0.02/GB)."""
    regions = {n: {"accelerators": {"count": 1, "type": "a100", "usd_per_hour": 3.67, "step_time_s": STEP_S}} for n in REGION_NAMES}
    links = [
        {"between": [a, b], "rtt_s": RTT_S, "bandwidth_bytes_per_s": BANDWIDTH_BYTES_PER_S, "egress_usd_per_gb": 0.02}
        for i, a in enumerate(REGION_NAMES)
        for b in REGION_NAMES[i + 1 :]
    ]
    return parse_regions({"regions": regions, "links": links}, source="geo_elastic")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _job(config: Any, spec: GeoRunSpec, folder: Path, args: argparse.Namespace, event: Any = None, **kw: Any) -> tuple[LaunchResult, float, dict[str, Any]]:
    """Run one job (``event(job)`` called while it runs); its result, end-to-end wall (agents started to all finished), and what ``event`` noted."""
    folder.mkdir(parents=True)
    spec = dataclasses.replace(spec, params_path=str(folder / "final-params.pt"))  # rank 0 saves the final parameters there
    noted: dict[str, Any] = {}
    t0 = time.perf_counter()
    with LocalJob(config, spec, links="model", checkpoint_every=args.checkpoint_every, max_restarts=3, job_dir=str(folder), **kw) as job:
        if event is not None:
            noted = event(job)
        got = job.wait(args.timeout)
    return got, time.perf_counter() - t0, noted


def _by_classes(params_file: Path, held_out: Any, classes_of: dict[str, tuple[int, ...]], seed: int) -> dict[str, float]:
    """Held-out accuracy of the saved final parameters on each region's own classes (``region`` -> accuracy)."""
    import torch

    from delibench.geo.task import cnn_model

    model = cnn_model(10, seed)
    torch.nn.utils.vector_to_parameters(torch.load(params_file), model.parameters())
    with torch.no_grad():
        hit = model(held_out.inputs).argmax(dim=1) == held_out.labels
    out = {}
    for region, classes in classes_of.items():
        mask = torch.isin(held_out.labels, torch.tensor(classes))
        out[region] = float(hit[mask].float().mean())
    return out


def _final(got: LaunchResult, by_classes: dict[str, float] | None = None) -> dict[str, Any]:
    r = got.result
    return {
        "val_accuracy_by_classes": by_classes,
        "val_loss": r.val_loss, "val_accuracy": r.val_accuracy, "world_size": r.world_size, "train_wall_s": r.wall_s, "cross_region_bytes": r.cross_region_bytes,
        "total_usd": r.total_usd, "identical_final_params": len({x["params_sha256"] for x in got.ranks}) == 1, "params_sha256": got.ranks[0]["params_sha256"],
        "ranks": [{k: x[k] for k in ("region", "start_step", "steps_done", "cross_region_bytes", "restore")} for x in got.ranks],
    }  # fmt: skip


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from delibench.geo.task import load_held_out, make_region_shards

    t_bench = time.perf_counter()
    work = Path(args.workdir)
    config = regions_config()
    shards = make_region_shards(work / "data", REGION_NAMES, samples_per_region=args.samples, held_out=args.held_out, skew=args.skew, seed=args.seed)
    held_out = load_held_out(shards.held_out)

    def by_classes(name: str) -> dict[str, float]:
        return _by_classes(work / name / "final-params.pt", held_out, shards.classes_of, args.seed)

    common = dict(
        strategy="ma", period=args.period, batch_size=args.batch, lr=args.lr, momentum=args.momentum, task="cnn-jpeg",
        data=shards.local_sources(), val_url=shards.held_out, val_samples=args.held_out, seed=args.seed,
    )  # fmt: skip
    out: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "txt", "workdir")}}
    out["setup"] = {"regions": list(REGION_NAMES), "step_time_s": STEP_S, "rtt_s": RTT_S, "bandwidth_bytes_per_s": BANDWIDTH_BYTES_PER_S, "links": "model", "task": "cnn-jpeg (local shards through deli)", "strategy": f"ma H={args.period}"}

    # (a) a worker SIGKILLed mid-run
    three = GeoRunSpec(workers=tuple((r, 1) for r in REGION_NAMES), steps=args.steps, **common)
    whole, whole_wall, _ = _job(config, three, work / "a-uninterrupted", args)
    _say(f"(a) uninterrupted: {whole_wall:.1f} s end to end, val loss {whole.result.val_loss:.3f}, acc {whole.result.val_accuracy:.3f}")

    def kill(job: LocalJob) -> dict[str, Any]:
        seen = job.wait_progress(args.kill_at, timeout_s=args.timeout)
        victim = next(rank for rank, (_, region) in job.worker_pids().items() if region == "us-west")
        pid = job.kill_worker(victim, signal.SIGKILL)
        return {"killed_rank": victim, "killed_pid": pid, "progress_seen_at_kill": seen, "killed_at_s": time.time()}

    killed, killed_wall, noted = _job(config, three, work / "a-killed", args, kill)
    event = killed.events[0] if killed.events else {}
    _say(f"(a) killed: {killed_wall:.1f} s end to end, events {list(killed.events)}")
    finished = all(x["start_step"] + x["steps_done"] == args.steps for x in killed.ranks)
    out["a"] = {
        "kill": {**noted, "region": "us-west"},
        "event": event,
        "events": list(killed.events),
        "uninterrupted": {"wall_s": whole_wall, **_final(whole, by_classes("a-uninterrupted"))},
        "killed": {"wall_s": killed_wall, **_final(killed, by_classes("a-killed"))},
        "seconds_lost": killed_wall - whole_wall,
        # from the SIGKILL to rank 0 of the new attempt recording the restart (checkpoint loaded)
        "kill_to_resume_s": event["t"] - noted["killed_at_s"] if event else None,
        "finished_all_steps": finished,
        "same_final_params_as_uninterrupted": killed.ranks[0]["params_sha256"] == whole.ranks[0]["params_sha256"],
    }

    # (b) a region joins mid-run
    two = GeoRunSpec(workers=tuple((r, 1) for r in REGION_NAMES[:2]), steps=args.join_steps, **common)
    alone, alone_wall, _ = _job(config, two, work / "b-two-regions", args)
    _say(f"(b) two regions, no join: {alone_wall:.1f} s, val loss {alone.result.val_loss:.3f}, acc {alone.result.val_accuracy:.3f}")

    def join(job: LocalJob) -> dict[str, Any]:
        seen = job.wait_progress(args.join_at, timeout_s=args.timeout)
        started = time.time()
        job.start_region("eu-west", 1)
        return {"progress_seen_at_join": seen, "nnodes": job.nnodes, "agent_started_at_s": started}

    joined, joined_wall, noted = _job(config, two, work / "b-join", args, join, max_regions=3)
    _say(f"(b) join: {joined_wall:.1f} s, events {list(joined.events)}")
    newcomer = [x for x in joined.ranks if x["region"] == "eu-west"]
    out["b"] = {
        "join": {**noted, "region": "eu-west"},
        "events": list(joined.events),
        "joined_at_step": joined.events[0]["resumed_at"] if joined.events else None,
        "steps_lost": sum(e["lost_steps"] for e in joined.events),
        # from eu-west's agent starting to rank 0 of the 3-region attempt recording the restart
        "agent_start_to_join_s": joined.events[0]["t"] - noted["agent_started_at_s"] if joined.events else None,
        "newcomer_steps": sum(x["steps_done"] for x in newcomer),
        "newcomer_cross_region_bytes": sum(x["cross_region_bytes"] for x in newcomer),
        "classes_of": {k: list(v) for k, v in shards.classes_of.items()},
        "without_join": {"wall_s": alone_wall, **_final(alone, by_classes("b-two-regions"))},
        "with_join": {"wall_s": joined_wall, **_final(joined, by_classes("b-join"))},
    }
    out["bench_wall_s"] = time.perf_counter() - t_bench
    return out


def format_report(out: dict[str, Any]) -> str:
    s, a, b = out["settings"], out["a"], out["b"]
    u, k, e = a["uninterrupted"], a["killed"], a["event"]
    lines = [
        f"geo elasticity: {', '.join(out['setup']['regions'])}, 1 worker each (emulated A100 step {STEP_S * 1e3:.0f} ms), "
        f"{out['setup']['strategy']}, {out['setup']['task']}, batch {s['batch']}, lr {s['lr']}, momentum {s['momentum']}; "
        f"links: communication-level model ({RTT_S * 1e3:.0f} ms RTT, {BANDWIDTH_BYTES_PER_S / 1e6:.0f} MB/s); torchrun, checkpoint every {s['checkpoint_every']} steps",
        "",
        f"(a) worker killed: 3 regions, {s['steps']} steps; us-west's worker (rank {a['kill'].get('killed_rank')}) SIGKILLed when rank 0 reported step {a['kill'].get('progress_seen_at_kill')}",
    ]
    if e:
        lines.append(
            f"  restart: world {e['world_size']} ({', '.join(e['regions'])}), step reached {e['reached']}, resumed at {e['resumed_at']} (restore {e['restore']}): "
            f"lost {e['lost_steps']} steps (bound: one checkpoint interval, {s['checkpoint_every']})"
        )
    lines += [
        f"  training finished: {'yes' if a['finished_all_steps'] else 'NO'} (every rank at step {s['steps']}; ranks hold identical parameters: {k['identical_final_params']})",
        f"  {'run':<16}{'end-to-end wall':>16}{'val loss':>10}{'val acc':>9}",
        f"  {'uninterrupted':<16}{u['wall_s']:>14.1f} s{u['val_loss']:>10.3f}{u['val_accuracy']:>9.3f}",
        f"  {'killed':<16}{k['wall_s']:>14.1f} s{k['val_loss']:>10.3f}{k['val_accuracy']:>9.3f}",
        f"  final parameters of the killed run equal the uninterrupted run's, bit for bit: {a['same_final_params_as_uninterrupted']} (exact restore)",
        f"  seconds lost: {a['seconds_lost']:+.1f} s (killed wall - uninterrupted wall, run one after the other), of which {a['kill_to_resume_s']:.1f} s from the SIGKILL to the"
        f" new attempt resuming (torchrun noticing, stopping the group, re-rendezvous, workers starting, checkpoint loaded); the {e.get('lost_steps', 0)} steps redone are the rest",
        "",
        f"(b) region joins: us-east + us-west start (--nnodes 2:3), {s['join_steps']} steps; eu-west's agent started when rank 0 reported step {b['join'].get('progress_seen_at_join')}",
    ]
    for ev in b["events"]:
        lines.append(f"  restart: world {ev['world_size']} ({', '.join(ev['regions'])}), step reached {ev['reached']}, resumed at {ev['resumed_at']} (restore {ev['restore']}): lost {ev['lost_steps']} steps")
    wj, nj = b["with_join"], b["without_join"]
    lines += [
        f"  eu-west's agent took {b['agent_start_to_join_s']:.1f} s from starting to training in the new world (torch import, rendezvous, the running agents restarting theirs)",
        f"  eu-west joined at step {b['joined_at_step']} and contributed {b['newcomer_steps']} steps ({b['newcomer_cross_region_bytes'] / 1e6:.2f} MB exchanged cross-region)",
        f"  held-out accuracy on each region's own classes ({', '.join(f'{r} {c[0]}-{c[-1]}' for r, c in b['classes_of'].items())}; {s['held_out'] // 10} images a class):",
        f"  {'run':<16}{'end-to-end wall':>16}{'val loss':>10}{'val acc':>9}{'world':>7}" + "".join(f"{r:>9}" for r in b["classes_of"]),
        f"  {'without join':<16}{nj['wall_s']:>14.1f} s{nj['val_loss']:>10.3f}{nj['val_accuracy']:>9.3f}{nj['world_size']:>7}" + "".join(f"{v:>9.3f}" for v in nj["val_accuracy_by_classes"].values()),
        f"  {'with join':<16}{wj['wall_s']:>14.1f} s{wj['val_loss']:>10.3f}{wj['val_accuracy']:>9.3f}{wj['world_size']:>7}" + "".join(f"{v:>9.3f}" for v in wj["val_accuracy_by_classes"].values()),
        "",
        f"benchmark wall: {out['bench_wall_s']:.0f} s",
    ]
    return "\n".join(lines)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="training images per region")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--skew", type=float, default=0.8, help="share of a region's images from its own classes")
    parser.add_argument("--steps", type=int, default=150, help="(a) steps per worker")
    parser.add_argument("--kill-at", type=int, default=75, help="(a) SIGKILL us-west's worker once rank 0 reports this step")
    parser.add_argument("--join-steps", type=int, default=240, help="(b) steps per worker")
    parser.add_argument("--join-at", type=int, default=20, help="(b) start eu-west once rank 0 reports this step")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--period", type=int, default=4, help="MA H")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.03, help="SGD lr (with --momentum 0.9; 0.1 diverged, see the docstring)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=240.0, help="per job")
    parser.add_argument("--workdir", default=None, help="keep the data and job folders here (default: a temporary directory, removed)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--txt", default=None, help="write the report here (with the command on top)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="delibench-geo-elastic-") as tmp:
        if args.workdir is None:
            args.workdir = tmp
        out = run_benchmark(args)
    publish("geo_elastic.py", format_report(out), out, txt=args.txt, json_path=args.json)


if __name__ == "__main__":
    main()
