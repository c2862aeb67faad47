"""``workmesh orders pair``: two instances A and B side by side from one command — two
processes, two databases, two vhosts on one RabbitMQ — each migrated and holding a token the
other uses to reach it. Prints both URLs and admin tokens as JSON, then runs until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from workmesh.settings import Settings

NAMES = ("A", "B")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    orders = commands.add_parser("orders", help="orders and their two-way sync")
    actions = orders.add_subparsers(required=True, metavar="ACTION")
    pair = actions.add_parser(
        "pair",
        help="run two syncing instances A and B side by side",
        description="Run instances A and B of the orders role as two processes with two "
        "databases and two vhosts on the RabbitMQ of WORKMESH_AMQP_URL. Each is migrated "
        "and given a token for the other; both URLs and admin tokens are printed as one JSON "
        "line on stdout. Runs until Ctrl-C (or SIGTERM), then stops both.",
    )
    pair.add_argument(
        "--dir",
        type=Path,
        default=Path("orders-pair"),
        help="where the SQLite databases go (default ./orders-pair)",
    )
    pair.add_argument("--database-a", help="A's database URL (default: SQLite in --dir)")
    pair.add_argument("--database-b", help="B's database URL (default: SQLite in --dir)")
    pair.add_argument("--vhost-a", default="workmesh-a", help="A's RabbitMQ vhost")
    pair.add_argument("--vhost-b", default="workmesh-b", help="B's RabbitMQ vhost")
    pair.add_argument("--port-a", type=int, default=8081, help="A's HTTP port")
    pair.add_argument("--port-b", type=int, default=8082, help="B's HTTP port")
    pair.add_argument("--host", default="127.0.0.1", help="HTTP host of both")
    pair.set_defaults(func=run_pair)  # fmt: skip


def _vhost_url(amqp_url: str, vhost: str) -> str:
    parts = urlsplit(amqp_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + vhost, parts.query, ""))


async def _reachable(url: str) -> bool:
    import aio_pika

    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), 5)
    except Exception:
        return False
    await connection.close()
    return True


def _ensure_vhost(url: str, vhost: str) -> None:
    """Create the vhost with rabbitmqctl when it cannot be reached."""
    if asyncio.run(_reachable(url)):
        return
    result = subprocess.run(
        ["rabbitmqctl", "-q", "add_vhost", vhost], capture_output=True, text=True
    )
    user = urlsplit(url).username or "guest"
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
        capture_output=True, text=True,
    )  # fmt: skip
    if not asyncio.run(_reachable(url)):
        raise SystemExit(
            f"workmesh: vhost {vhost!r} is not reachable and rabbitmqctl could not add it "
            f"({result.stderr.strip()}); create it: rabbitmqctl add_vhost {vhost}"
        )


async def _prepare(database_url: str, token_name: str) -> str:
    """Migrate the database and make a producer token there; returns the token."""
    from workmesh.db import create_engine, migrate, session_factory
    from workmesh.security import Role
    from workmesh.services.tokens import create_api_token
    from workmesh.settings import DatabaseSettings

    await asyncio.to_thread(migrate, database_url)
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        async with session_factory(engine)() as session, session.begin():
            return await create_api_token(session, token_name, Role.PRODUCER)
    finally:
        await engine.dispose()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_pair(settings: Settings, args: argparse.Namespace) -> int:
    args.dir.mkdir(parents=True, exist_ok=True)
    databases = {
        "A": args.database_a or f"sqlite+aiosqlite:///{(args.dir / 'a.db').resolve()}",
        "B": args.database_b or f"sqlite+aiosqlite:///{(args.dir / 'b.db').resolve()}",
    }
    vhosts = {"A": args.vhost_a, "B": args.vhost_b}
    amqp = {n: _vhost_url(settings.amqp.url, vhosts[n]) for n in NAMES}
    urls = {"A": f"http://{args.host}:{args.port_a}", "B": f"http://{args.host}:{args.port_b}"}
    ports = {"A": args.port_a, "B": args.port_b}
    admin = {n: secrets.token_urlsafe(24) for n in NAMES}
    suffix = secrets.token_hex(4)

    for n in NAMES:
        _ensure_vhost(amqp[n], vhosts[n])

    async def prepare() -> dict[str, str]:
        # The token each instance uses to reach the other lives in the other's database.
        return {
            "A": await _prepare(databases["B"], f"peer-A-{suffix}"),
            "B": await _prepare(databases["A"], f"peer-B-{suffix}"),
        }

    peer_tokens = asyncio.run(prepare())
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for n in NAMES:
        other = "B" if n == "A" else "A"
        env = {
            **os.environ,
            "WORKMESH_AMQP_URL": amqp[n],
            "WORKMESH_DATABASE_URL": databases[n],
            "WORKMESH_HTTP_HOST": args.host,
            "WORKMESH_HTTP_PORT": str(ports[n]),
            "WORKMESH_ADMIN_TOKEN": admin[n],
            "WORKMESH_ORDERS_INSTANCE": n,
            "WORKMESH_ORDERS_PEER_URL": urls[other],
            "WORKMESH_ORDERS_PEER_TOKEN": peer_tokens[n],
        }
        processes[n] = subprocess.Popen(
            [sys.executable, "-m", "workmesh.cli", "run", "--role", "orders", "--no-migrate"],
            env=env,
            # Our stdout is the one JSON line a script reads; the instances' output (their
            # logs, FastStream's included) goes to stderr, so a reader that stops after that
            # line never blocks them on a full pipe.
            stdout=sys.stderr,
        )
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        deadline = time.monotonic() + 60
        while not all(_healthy(urls[n]) for n in NAMES):
            if stop["now"] or any(p.poll() is not None for p in processes.values()):
                return 1
            if time.monotonic() > deadline:
                print("workmesh: the instances did not come up in 60 s", file=sys.stderr)
                return 1
            time.sleep(0.2)
        report = {
            n: {"url": urls[n], "admin_token": admin[n], "database": databases[n],
                "vhost": vhosts[n]}
            for n in NAMES
        }  # fmt: skip
        print(json.dumps(report), flush=True)
        print("instances A and B are running; Ctrl-C stops both", file=sys.stderr)
        while not stop["now"]:
            if any(p.poll() is not None for p in processes.values()):
                print("workmesh: an instance exited; stopping the other", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
