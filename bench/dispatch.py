"""Dispatch benchmark: workmesh end to end against Celery on the same RabbitMQ.

Run from the repository root::

    .venv/bin/python bench/dispatch.py          # full run (~2-3 min)
    .venv/bin/python bench/dispatch.py --quick  # smoke run (~30-40 s)
    .venv/bin/python bench/dispatch.py --only workmesh --confirm-delay 100  # a slow disk

See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._celery_run import run_celery
from bench._common import SystemResult, add_vhost, delete_vhost, free_port, rabbitmq_pid
from bench._workmesh import MeshProcess, run_workmesh
from bench.relay import run as run_relay

# bench/relay.py's relays run after Celery, and what each keeps of the rules.
RELAYS = {
    "pipelined": "pipelined (priority order lost under load)",
    "held": "held until reported (priority kept; fixed slots only)",
    "bounded": "bounded by basic.get (priority kept; workmesh's way)",
}

ANCHOR = (
    "issue anchor: Celery ~320 tasks/s with confirms, ~690-870 without; bare aio-pika relay "
    "~600 msgs/s; target: workmesh ≥ 2x Celery-with-confirms, never below "
    "Celery-without-confirms; p99 < 25 ms at 200/s; imbalance ≤ 1"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~30 s)")
    parser.add_argument("--host", default="127.0.0.1:5672", help="RabbitMQ host:port")
    parser.add_argument("--workers", type=int, default=4, help="workmesh bots")
    parser.add_argument("--capacity", type=int, default=4, help="capacity of each bot")
    parser.add_argument("--celery-pool", choices=["threads", "solo"], default="threads")
    parser.add_argument("--celery-concurrency", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the logs")
    parser.add_argument(
        "--only",
        choices=["workmesh", "celery"],
        default=None,
        help="run one side only (for diagnosis; the full comparison needs both)",
    )
    parser.add_argument(
        "--confirm-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="the mesh reaches RabbitMQ through a proxy (a process of its own) that sends it "
        "RabbitMQ's publisher confirms MS milliseconds late, as a disk that syncs slowly would; "
        "with --only workmesh",
    )
    args = parser.parse_args(argv)
    if args.confirm_delay and args.only != "workmesh":
        parser.error("--confirm-delay goes with --only workmesh: Celery's confirms are not delayed")
    if args.celery_pool == "solo":
        args.celery_concurrency = 1

    n = 1000 if args.quick else 5000
    warmup = 100 if args.quick else 200
    rate = 200.0
    seconds = 3.0 if args.quick else 10.0

    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    vhost = f"bench-dispatch-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    url = f"amqp://guest:guest@{args.host}/{vhost}"
    workdir = Path(tempfile.mkdtemp(prefix="workmesh-bench-"))
    keep = args.keep
    results: list[SystemResult] = []
    relays: dict[str, float] = {}
    add_vhost(vhost)
    rabbitmq_pid()  # looked up once, up front (rabbitmqctl is slow)
    log(f"vhost {vhost}, logs in {workdir}")
    try:
        if args.only != "celery":
            with mesh_route(args.host, args.confirm_delay) as mesh_host:
                mesh_url = f"amqp://guest:guest@{mesh_host}/{vhost}"
                results.append(
                    run_mesh(workdir, url, mesh_url, args, n, warmup, rate, seconds, log)
                )
        for confirm in (True, False) if args.only != "workmesh" else ():
            name = "Celery+confirms" if confirm else "Celery no confirms"
            try:
                results.append(
                    run_celery(
                        workdir,
                        url,
                        confirm,
                        args.celery_pool,
                        args.celery_concurrency,
                        n,
                        warmup,
                        rate,
                        seconds,
                        log,
                    )
                )
            except Exception as error:
                results.append(SystemResult(name, "?", notes=[f"failed: {error!r}"]))
                keep = True
        if args.only is None:
            # The contract's ceilings in the same run, so that the ratios hold on a noisy
            # machine: one that loses priority order under load, two that keep it.
            for mode in RELAYS:
                try:
                    relays[mode] = run_relay(n, mode)
                    log(f"bare relay, {mode}: {relays[mode]:.0f} tasks/s")
                except Exception as error:
                    log(f"bare relay, {mode}, failed: {error!r}")
    finally:
        try:
            delete_vhost(vhost)
        except Exception as error:
            log(f"could not delete vhost {vhost}: {error!r}")
    if any(
        r.notes and any("error" in x or "stalled" in x or "failed" in x for x in r.notes)
        for r in results
    ):
        keep = True
    print_report(results, n, warmup, rate, seconds, args, time.monotonic() - started, relays)
    if keep:
        print(f"\nlogs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


@contextlib.contextmanager
def mesh_route(host: str, confirm_delay_ms: float) -> Iterator[str]:
    """Where the mesh connects: RabbitMQ itself, or a ConfirmProxy in front of it."""
    if not confirm_delay_ms:
        yield host
        return
    port = free_port()
    ready = multiprocessing.get_context("spawn").Event()
    proxy = multiprocessing.get_context("spawn").Process(
        target=_serve_proxy, args=(host, port, confirm_delay_ms / 1000, ready), daemon=True
    )
    proxy.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the confirm-delay proxy did not start")
        yield f"127.0.0.1:{port}"
    finally:
        proxy.terminate()
        proxy.join(10)


def _serve_proxy(host: str, port: int, delay: float, ready: Any) -> None:
    from tests.amqp_proxy import ConfirmProxy

    upstream_host, _, upstream_port = host.partition(":")

    async def serve() -> None:
        proxy = ConfirmProxy(upstream_host, int(upstream_port or 5672), delay=delay)
        await proxy.start(port)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


def run_mesh(workdir, url, mesh_url, args, n, warmup, rate, seconds, log) -> SystemResult:
    mesh = MeshProcess(workdir, mesh_url, args.workers, args.capacity)
    result: SystemResult
    try:
        mesh.setup()
        log("workmesh: migrated, producer token and workers registered")
        mesh.start()
        result = asyncio.run(run_workmesh(mesh, url, n, warmup, rate, seconds, log))
    except Exception as error:
        result = SystemResult("workmesh", "?", notes=[f"failed: {error!r}"])
    finally:
        code = mesh.stop()
    if code not in (None, 0):
        result.notes.append(f"mesh exited with {code} after SIGTERM")
    problems = mesh.problems()
    if problems:
        result.notes.append(
            f"{len(problems)} error/warning lines in the mesh's stderr ({mesh.stderr_path}); "
            f"first: {problems[0][:300]}"
        )
    return result


def _fmt(value: float | None, spec: str = ".0f", scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


def print_report(results, n, warmup, rate, seconds, args, elapsed, relays=None) -> None:
    by = {r.name: r for r in results}
    wm = by.get("workmesh")
    cc = by.get("Celery+confirms")
    cn = by.get("Celery no confirms")
    cols = [wm, cc, cn]
    names = ["workmesh", "Celery+confirms", "Celery no confirms"]

    def cell(r: SystemResult | None, f) -> str:
        if r is None:
            return "n/a"
        try:
            return str(f(r))
        except (AttributeError, TypeError, ValueError):
            return "n/a"

    def burst_rate(attr: str):
        return lambda r: _fmt(getattr(r.burst, attr)) if r.burst else "n/a"

    def lat(p: float):
        return lambda r: _fmt(r.latency.percentile(p), ".1f", 1000) if r.latency else "n/a"

    def imbalance(r: SystemResult) -> str:
        if r.burst is None or r.burst.imbalance is None:
            return "n/a (1 worker)"
        counts = "/".join(str(r.burst.per_worker[k]) for k in sorted(r.burst.per_worker))
        return f"{r.burst.imbalance} ({counts})"

    def done_rate(r: SystemResult) -> str:
        return _fmt(r.burst.done_rate) if r.burst and r.name == "workmesh" else "n/a"

    def busy(cpu: dict[str, float]) -> str:
        return " / ".join(f"{v:.0f}" for v in cpu.values()) if cpu else "n/a"

    def per_task(cpu: dict[str, float], seconds_per_task: float | None) -> str:
        # % of a core x seconds per task / 100 = seconds of CPU per task (printed in ms).
        if not cpu or not seconds_per_task:
            return "n/a"
        return " / ".join(f"{10 * v * seconds_per_task:.2f}" for v in cpu.values())

    def cpu(r: SystemResult) -> str:
        return busy(r.burst.cpu) if r.burst else "n/a"

    def cpu_per_task(r: SystemResult) -> str:
        rate = r.burst.received_rate if r.burst else None
        return per_task(r.burst.cpu, 1 / rate) if r.burst and rate else "n/a"

    def paced_cpu(r: SystemResult) -> str:
        return busy(r.latency.cpu) if r.latency else "n/a"

    def paced_cpu_per_task(r: SystemResult) -> str:
        if r.latency is None or not r.latency.sent:
            return "n/a"
        return per_task(r.latency.cpu, r.latency.cpu_window / r.latency.sent)

    rows = [
        (f"burst of {n}: producer submit rate (tasks/s)", burst_rate("submit_rate")),
        ("burst: end-to-end, last received (tasks/s)", burst_rate("received_rate")),
        ("burst: end-to-end, all done in the mesh (tasks/s)", done_rate),
        (f"latency p50 at {rate:.0f}/s (ms)", lat(50)),
        (f"latency p99 at {rate:.0f}/s (ms)", lat(99)),
        (
            "latency samples received/sent",
            lambda r: f"{len(r.latency.samples)}/{r.latency.sent}" if r.latency else "n/a",
        ),
        ("tasks received per worker over the burst, max-min*", imbalance),
        (
            "max in-flight diff (bots, sampled 5 ms)",
            lambda r: (
                str(r.burst.max_inflight_diff)
                if r.burst and r.burst.max_inflight_diff is not None
                else "n/a"
            ),
        ),
        (
            "max load diff, burst (mesh view, every 0.5 s)",
            lambda r: (
                str(r.burst.max_load_diff)
                if r.burst and r.burst.max_load_diff is not None
                else "n/a"
            ),
        ),
        (
            f"max load diff, {rate:.0f}/s (mesh view, every 0.5 s)",
            lambda r: (
                str(r.latency.max_load_diff)
                if r.latency and r.latency.max_load_diff is not None
                else "n/a"
            ),
        ),
        ("burst CPU %: server/driver/RabbitMQ/machine**", cpu),
        ("burst CPU per task (ms): server/driver/RabbitMQ/machine", cpu_per_task),
        (f"CPU % at {rate:.0f}/s: server/driver/RabbitMQ/machine**", paced_cpu),
        (f"CPU per task at {rate:.0f}/s (ms): server/driver/RabbitMQ/machine", paced_cpu_per_task),
    ]
    width0 = max(len(label) for label, _ in rows)
    table = [[cell(r, f) for r in cols] for _, f in rows]
    widths = [max(len(names[i]), *(len(row[i]) for row in table)) for i in range(3)]

    print()
    print(
        f"dispatch benchmark ({'quick' if args.quick else 'full'}): {n} no-op tasks in a burst "
        f"(after {warmup} warm-up), then {rate:.0f} tasks/s paced for {seconds:.0f} s; "
        f"priorities 0-9 round robin; persistent messages; wall time {elapsed:.0f} s"
    )
    for r in results:
        print(f"  {r.name}: {r.setup}")
    print(
        "  Celery: the task body stamps 'received' and appends it to a file; no result backend;"
        " worker flags --without-gossip --without-mingle"
    )
    print(
        "  workmesh: 'received' is the bot's consumer callback; 'done' is when GET "
        "/api/v1/stats shows all of them done (polled every 20 ms)"
    )
    if args.confirm_delay:
        print(
            f"  workmesh: RabbitMQ's publisher confirms reach the mesh {args.confirm_delay:.0f} ms "
            "late (--confirm-delay: a proxy in front of RabbitMQ, as a slow disk)"
        )
    print()
    print(f"{'':{width0}}  " + "  ".join(f"{names[i]:>{widths[i]}}" for i in range(3)))
    for (label, _), row in zip(rows, table, strict=True):
        print(f"{label:{width0}}  " + "  ".join(f"{row[i]:>{widths[i]}}" for i in range(3)))
    print(
        "*  counts in worker-id order. workmesh: per bot (bot-1/bot-2/...), which follows how fast "
        "each bot finishes; Celery (one worker process): per pool thread, which says little\n"
        "** over the burst, or the paced phase until all were received; % of one core: "
        "server = the mesh process / the Celery worker process;\n   driver = this process "
        "(workmesh: producer + bots; Celery: producer); RabbitMQ = its node; machine = all "
        f"{os.cpu_count()} cores busy (of {100 * (os.cpu_count() or 1)}), anything else included"
    )
    print()
    print(ANCHOR)

    def rate_of(r: SystemResult | None, attr: str) -> float | None:
        return getattr(r.burst, attr) if r is not None and r.burst is not None else None

    wm_recv, wm_done = rate_of(wm, "received_rate"), rate_of(wm, "done_rate")
    cc_recv, cn_recv = rate_of(cc, "received_rate"), rate_of(cn, "received_rate")
    for label, value in (("received", wm_recv), ("done", wm_done)):
        if value is not None and cc_recv:
            print(f"ratio workmesh ({label}) / Celery-with-confirms: {value / cc_recv:.2f}x")
        else:
            print(f"ratio workmesh ({label}) / Celery-with-confirms: n/a")

    if relays:
        # bench/relay.py: the same three persistent, confirmed messages per task, with no
        # database, no events, no checks: what the contract allows on this machine.
        print("contract ceilings, bare aio-pika relays (bench/relay.py, this run):")
        for mode, relay in relays.items():
            print(
                f"  {RELAYS[mode] + ':':<56} {relay:5.0f} tasks/s"
                + (f" = {relay / cc_recv:.2f}x Celery-with-confirms" if cc_recv else "")
                + (f"; workmesh (received) at {wm_recv / relay:.0%} of it" if wm_recv else "")
            )

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    def both(a: float | None, b: float | None, test) -> bool | None:
        return None if a is None or b is None else bool(test(a, b))

    p99 = wm.latency.percentile(99) if wm and wm.latency else None
    lat_complete = bool(wm and wm.latency and len(wm.latency.samples) == wm.latency.sent)
    load_diffs = [
        d
        for d in (
            wm.burst.max_load_diff if wm and wm.burst else None,
            wm.latency.max_load_diff if wm and wm.latency else None,
        )
        if d is not None
    ]
    print("targets for workmesh:")
    print(
        f"  ≥ 2x Celery-with-confirms (received): "
        f"{verdict(both(wm_recv, cc_recv, lambda a, b: a >= 2 * b))}"
    )
    print(
        f"  ≥ 2x Celery-with-confirms (done):     "
        f"{verdict(both(wm_done, cc_recv, lambda a, b: a >= 2 * b))}"
    )
    print(
        f"  never below Celery-without-confirms (received): "
        f"{verdict(both(wm_recv, cn_recv, lambda a, b: a >= b))}"
    )
    print(
        f"  never below Celery-without-confirms (done):     "
        f"{verdict(both(wm_done, cn_recv, lambda a, b: a >= b))}"
    )
    print(
        f"  p99 < 25 ms at {rate:.0f}/s: "
        f"{verdict(None if p99 is None else p99 < 0.025 and lat_complete)}"
        + ("" if lat_complete or p99 is None else " (not every task arrived)")
    )
    # The imbalance is in load (a worker's unfinished tasks over its capacity), which
    # is what least load keeps even; how many tasks each bot got over a burst also depends on
    # how fast each bot finishes, and the bots' own in-flight counts on messages in transit.
    print(
        f"  load imbalance ≤ 1 (mesh view, burst and paced): "
        f"{verdict(max(load_diffs) <= 1 if load_diffs else None)}"
    )
    notes = [(r.name, note) for r in results for note in r.notes]
    notes += [(r.name, f"burst: {r.burst.stalled}") for r in results if r.burst and r.burst.stalled]
    notes += [
        (r.name, f"latency: {r.latency.stalled}")
        for r in results
        if r.latency and r.latency.stalled
    ]
    if notes:
        print("notes:")
        for name, note in notes:
            print(f"  {name}: {note}")


if __name__ == "__main__":
    sys.exit(main())
