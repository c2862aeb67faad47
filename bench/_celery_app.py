"""The Celery side of the dispatch benchmark: one app, one no-op task.

The worker is started by ``bench/dispatch.py`` as ``celery -A bench._celery_app worker`` with
its settings in the environment:

- ``BENCH_CELERY_BROKER``: the AMQP URL (the benchmark's own vhost);
- ``BENCH_CELERY_CONFIRM``: ``1`` for publisher confirms, ``0`` without;
- ``BENCH_CELERY_QUEUE``: the queue (declared with ``x-max-priority: 10``);
- ``BENCH_CELERY_OUT``: a file the task appends one line to per task it receives.

The task body is the "received" moment: it stamps ``time.time()`` and appends
``phase seq stamp received thread`` to the file (one small write, flushed), which the driver
reads. No result backend is involved.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO, Any

from celery import Celery
from kombu import entity

TASK_NAME = "bench.noop"
Exchange: Any = entity.Exchange
Queue: Any = entity.Queue


def make_app(broker: str, confirm: bool, queue: str) -> Celery:
    app = Celery("bench", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_delivery_mode="persistent",
        task_queues=[
            Queue(
                queue,
                Exchange(queue, type="direct", durable=True),
                routing_key=queue,
                durable=True,
                queue_arguments={"x-max-priority": 10},
            )
        ],
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"confirm_publish": True} if confirm else {},
    )
    app.task(name=TASK_NAME)(noop)
    return app


_lock = threading.Lock()
_out: IO[str] | None = None


def noop(phase: str, seq: int, stamp: float) -> None:
    received = time.time()
    global _out
    with _lock:
        if _out is None:
            _out = open(os.environ["BENCH_CELERY_OUT"], "a", encoding="ascii")  # noqa: SIM115
        _out.write(f"{phase} {seq} {stamp!r} {received!r} {threading.current_thread().name}\n")
        _out.flush()


def _from_env() -> Celery:
    return make_app(
        os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
        os.environ.get("BENCH_CELERY_CONFIRM", "0") == "1",
        os.environ.get("BENCH_CELERY_QUEUE", "bench.celery"),
    )


app: Any = _from_env()
