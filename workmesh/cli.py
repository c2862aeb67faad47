"""The ``workmesh`` command: run the mesh, migrate, manage workers and tokens, submit, stats."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import SettingsError

from workmesh.capabilities import capability_names
from workmesh.settings import Settings

T = TypeVar("T")

DESCRIPTION = """\
workmesh: a worker mesh on RabbitMQ. Tasks go into a priority queue; the dispatcher hands each
to the least-loaded online worker and brings reserve workers in only when the active ones are
full. Settings come from WORKMESH_* environment variables (see README): the RabbitMQ URL
(WORKMESH_AMQP_URL) and the database URL (WORKMESH_DATABASE_URL) above all.
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # alembic announces each of its plugins at INFO; only its warnings matter here.
    logging.getLogger("alembic").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        settings = Settings.from_env()
    except (ValidationError, SettingsError) as error:
        print(f"workmesh: bad settings: {error}", file=sys.stderr)
        return 2
    try:
        return int(args.func(settings, args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as error:
        print(f"workmesh: {error}", file=sys.stderr)
        return 1


class CliError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workmesh",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the mesh (all roles, or one with --role)",
        description="Run the mesh. With no --role every role runs in "
        "this process; compose runs one role per service.",
    )
    run.add_argument(
        "--role",
        choices=["all", "api", "dispatcher", *capability_names()],
        default="all",
        help="which role to run (default: all): the task api, the dispatcher, or one "
        "capability's consumers and routes",
    )
    run.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not upgrade the database schema first (compose migrates once)",
    )
    run.set_defaults(func=_run)

    migrate = commands.add_parser("migrate", help="upgrade the database schema (alembic)")
    migrate.set_defaults(func=_migrate)

    worker = commands.add_parser("worker", help="register and list workers")
    worker_commands = worker.add_subparsers(required=True, metavar="ACTION")
    add = worker_commands.add_parser(
        "add",
        help="register a worker; prints its token once",
        description="Register a worker. Prints JSON with its token (shown once, stored only "
        "as a hash) and its queue, workmesh.worker.<id>.",
    )
    add.add_argument("id", help="worker id: lowercase letters, digits, '-' and '_'")
    add.add_argument("--capacity", type=int, default=1, help="tasks it may hold at once")
    add.add_argument(
        "--tier",
        choices=["active", "reserve"],
        default="active",
        help="reserve workers get tasks only when active ones are full",
    )
    add.set_defaults(func=_worker_add)
    listing = worker_commands.add_parser("list", help="list workers with their load")
    listing.set_defaults(func=_worker_list)
    rotate = worker_commands.add_parser(
        "token",
        help="give a worker a new token; prints it once",
        description="Replace a worker's token (a leaked one, or routine rotation). The old "
        "token stops working over HTTP at once and over AMQP within a dispatcher review; open "
        "WebSocket sessions keep going until they close.",
    )
    rotate.add_argument("id", help="the worker's id")
    rotate.set_defaults(func=_worker_token)
    change = worker_commands.add_parser(
        "set",
        help="change a worker's capacity or tier",
        description="Change a registered worker's capacity and/or tier; prints the worker. "
        "The dispatcher takes it up at its next review (WORKMESH_DISPATCH_REVIEW_INTERVAL). "
        "A worker made a reserve stands by until the scaling policy brings it in; tasks it "
        "holds stay with it. A worker consuming over AMQP should set its prefetch to the new "
        "capacity.",
    )
    change.add_argument("id", help="the worker's id")
    change.add_argument("--capacity", type=_positive, help="tasks it may hold at once")
    change.add_argument("--tier", choices=["active", "reserve"], help="its new tier")
    change.set_defaults(func=_worker_set)
    remove = worker_commands.add_parser(
        "remove",
        help="remove a worker; its unfinished tasks go back to the queue",
        description="Remove a worker: its token stops working at once; at the dispatcher's "
        "next review its unfinished tasks go back to the queue (with their priority) and its "
        "queue is deleted. Its finished tasks still name it. 'worker add' with the same id "
        "brings it back with a new token.",
    )
    remove.add_argument("id", help="the worker's id")
    remove.set_defaults(func=_worker_remove)

    token = commands.add_parser("token", help="make, list and revoke producer and admin tokens")
    token_commands = token.add_subparsers(required=True, metavar="ACTION")
    token_add = token_commands.add_parser("add", help="make a token; prints it once")
    token_add.add_argument("name", help="a name to recognise the token by")
    token_add.add_argument("--role", choices=["producer", "admin"], default="producer")
    token_add.set_defaults(func=_token_add)
    token_list = token_commands.add_parser("list", help="list tokens by name and role")
    token_list.set_defaults(func=_token_list)
    revoke = token_commands.add_parser(
        "revoke",
        help="revoke a token by name",
        description="Revoke a producer or admin token. It stops working over HTTP at once and "
        "over AMQP within a dispatcher review (WORKMESH_DISPATCH_REVIEW_INTERVAL).",
    )
    revoke.add_argument("name", help="the token's name (as given to 'token add')")
    revoke.set_defaults(func=_token_revoke)

    submit = commands.add_parser(
        "submit",
        help="submit tasks from a JSON-lines file or stdin over AMQP",
        description='Publish one task per JSON line ({"kind", "payload", "priority", ...}) '
        "to workmesh.tasks with publisher confirms. The token comes from --token or "
        "WORKMESH_TOKEN. Bad lines are reported with their line number and skipped.",
    )
    submit.add_argument("file", nargs="?", default="-", help="JSON-lines file (default: stdin)")
    submit.add_argument("--token", default=None, help="producer or admin token")
    submit.add_argument(
        "--window",
        type=int,
        default=256,
        help="publishes awaiting confirmation at once (default 256)",
    )
    submit.set_defaults(func=_submit)

    stats = commands.add_parser("stats", help="tasks by status, workers and queue depth")
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    stats.set_defaults(func=_stats)

    dead = commands.add_parser(
        "dead",
        help="look at the dead letters in workmesh.dead, or move them to a file",
        description="Messages the mesh gave up on wait in the queue workmesh.dead, each with "
        "the reason (docs/contract.md, section 7). Nothing takes them off but this command.",
    )
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    dead_list = dead_commands.add_parser(
        "list",
        help="how many wait, and the first few with their reasons (they stay in the queue)",
    )
    dead_list.add_argument(
        "--limit", type=_positive, default=20, help="how many to show (default 20)"
    )
    dead_list.add_argument("--json", action="store_true", help="print JSON lines instead")
    dead_list.set_defaults(func=_dead_list)
    dead_move = dead_commands.add_parser(
        "move",
        help="write dead letters to a JSON-lines file and take them off the queue",
        description="Append each dead letter as a JSON line (reason, source, routing_key, "
        "headers, body) to FILE, and acknowledge it only once the file is synced to disk. "
        "Use - for standard output.",
    )
    dead_move.add_argument("file", help="JSON-lines file to append to (- for stdout)")
    dead_move.add_argument(
        "--limit", type=_positive, default=None, help="move at most this many (default: all)"
    )
    dead_move.set_defaults(func=_dead_move)

    from workmesh.files.cli import add_commands as add_files_commands

    add_files_commands(commands)
    from workmesh.orders.cli import add_commands as add_orders_commands

    add_orders_commands(commands)
    return parser


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.runtime import run

    asyncio.run(run(settings, args.role, run_migrations=not args.no_migrate))
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.db import migrate

    migrate(settings.database.url)
    print("database schema is up to date", file=sys.stderr)
    return 0


def _worker_add(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.workers import WorkerCreate
    from workmesh.services.workers import WorkerExists, create_worker

    try:
        spec = WorkerCreate(id=args.id, capacity=args.capacity, tier=args.tier)
    except ValidationError as error:
        raise CliError(
            f"bad worker: {error.errors()[0]['loc'][0]}: {error.errors()[0]['msg']}"
        ) from None

    token = _change(settings, lambda session: create_worker(session, spec), WorkerExists)
    try:
        asyncio.run(_declare_worker_queue(settings, spec.id))
    except Exception as error:  # the dispatcher declares it at its next review anyway
        print(f"note: queue not declared yet ({error}); the dispatcher will", file=sys.stderr)
    print(
        json.dumps(
            {
                "id": spec.id,
                "token": token,
                "queue": f"workmesh.worker.{spec.id}",
                "capacity": spec.capacity,
                "tier": spec.tier.value,
            }
        )
    )
    print("keep the token: it is shown only now", file=sys.stderr)
    return 0


async def _declare_worker_queue(settings: Settings, worker_id: str) -> None:
    """So the new worker can start consuming at once, before the dispatcher's next review."""
    import aio_pika

    from rabbitmq.topology import declare_queue, worker_queue

    connection = await asyncio.wait_for(aio_pika.connect(settings.amqp.url), timeout=5)
    async with connection:
        await declare_queue(await connection.channel(), worker_queue(worker_id))


def _worker_list(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from workmesh.services.workers import worker_views

    async def views() -> list[Any]:
        async with _session(settings) as session:
            return await worker_views(session)

    table = Table("id", "tier", "online", "engaged", "load", "capacity", "last heartbeat")
    for v in asyncio.run(views()):
        table.add_row(
            v.id,
            v.tier,
            "yes" if v.online else "no",
            "yes" if v.engaged else "",
            str(v.load),
            str(v.capacity),
            str(v.last_heartbeat_at or "never"),
        )
    Console().print(table)
    return 0


def _worker_token(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.services.workers import UnknownWorker, replace_worker_token

    token = _change(settings, lambda session: replace_worker_token(session, args.id), UnknownWorker)
    print(json.dumps({"id": args.id, "token": token}))
    print("keep the token: it is shown only now; the old one no longer works", file=sys.stderr)
    return 0


def _worker_set(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.workers import WorkerUpdate
    from workmesh.services.workers import UnknownWorker, update_worker

    try:
        change = WorkerUpdate(capacity=args.capacity, tier=args.tier)
    except ValidationError:
        raise CliError("nothing to change: give --capacity, --tier or both") from None

    view = _change(settings, lambda session: update_worker(session, args.id, change), UnknownWorker)
    print(view.model_dump_json())
    return 0


def _worker_remove(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.services.workers import UnknownWorker, remove_worker

    _change(settings, lambda session: remove_worker(session, args.id), UnknownWorker)
    print(f"removed worker {args.id}; its unfinished tasks go back to the queue", file=sys.stderr)
    return 0


def _token_list(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from workmesh.services.tokens import api_tokens

    async def listing() -> list[tuple[str, str, str]]:
        async with _session(settings) as session:
            return [(t.name, t.role, str(t.created_at)) for t in await api_tokens(session)]

    table = Table("name", "role", "created")
    for row in asyncio.run(listing()):
        table.add_row(*row)
    Console().print(table)
    return 0


def _token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.services.tokens import UnknownToken, revoke_api_token

    _change(settings, lambda session: revoke_api_token(session, args.name), UnknownToken)
    print(f"revoked {args.name!r}", file=sys.stderr)
    return 0


def _token_add(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.security import Role
    from workmesh.services.tokens import TokenNameTaken, create_api_token

    token = _change(
        settings,
        lambda session: create_api_token(session, args.name, Role(args.role)),
        TokenNameTaken,
    )
    print(token)
    print("keep the token: it is shown only now", file=sys.stderr)
    return 0


def _submit(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.submit import submit_lines

    token = args.token or os.environ.get("WORKMESH_TOKEN")
    if not token:
        raise CliError("a producer token is needed: --token or WORKMESH_TOKEN")
    stream: IO[str] = sys.stdin if args.file == "-" else _open(args.file)
    with stream:
        lines = list(_numbered(stream))
    report = asyncio.run(submit_lines(settings, token, lines, window=args.window))
    for number, reason in report.rejected:
        print(f"line {number}: {reason}", file=sys.stderr)
    print(f"submitted {report.published}, rejected {len(report.rejected)}", file=sys.stderr)
    return 1 if report.rejected else 0


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.submit import gather_stats

    stats = asyncio.run(gather_stats(settings))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tasks = Table("status", "tasks", title="tasks")
    for status, count in stats["tasks"].items():
        tasks.add_row(status, str(count))
    workers = Table("", "", title="workers")
    for key, value in stats["workers"].items():
        workers.add_row(key, str(value))
    queues = Table("queue", "ready", title="queues")
    for name, depth in stats["queues"].items():
        queues.add_row(name, str(depth))
    console.print(tasks, workers, queues)
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _dead_list(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh import dead

    try:
        count, letters = asyncio.run(dead.peek(settings.amqp.url, args.limit))
    except LookupError as error:
        raise CliError(str(error)) from None
    if args.json:
        for letter in letters:
            print(letter.as_json())
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "source", "reason", "body", title=f"{count} dead letters in workmesh.dead", expand=True
    )
    for letter in letters:
        table.add_row(letter.source, letter.reason, letter.body[:200])
    Console().print(table)
    if count > len(letters):
        print(f"(the first {len(letters)} of {count}; --limit shows more)", file=sys.stderr)
    return 0


def _dead_move(settings: Settings, args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from rich.console import Console
    from rich.progress import Progress

    from workmesh import dead

    target = nullcontext(sys.stdout) if args.file == "-" else _open(args.file, "a")
    try:
        with (
            target as out,
            Progress(console=Console(stderr=True), transient=True) as progress,
        ):
            bar = progress.add_task("moving dead letters", total=None)

            def advance(moved: int, total: int) -> None:
                progress.update(bar, advance=moved, total=total)

            moved = asyncio.run(dead.move_to(settings.amqp.url, out, args.limit, advance))
    except LookupError as error:
        raise CliError(str(error)) from None
    where = "stdout" if args.file == "-" else args.file
    print(f"moved {moved} dead letters to {where}", file=sys.stderr)
    return 0


def _open(path: str, mode: str = "r") -> IO[str]:
    try:
        return open(path, mode, encoding="utf-8")
    except OSError as error:
        doing = "read" if mode == "r" else "write"
        raise CliError(f"cannot {doing} {path}: {error.strerror}") from None


def _numbered(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line


def _change(
    settings: Settings, change: Callable[[Any], Awaitable[T]], *refusals: type[Exception]
) -> T:
    """Run ``change`` in one transaction; a refusal (an unknown name, one taken already) is
    the command's error message."""

    async def run() -> T:
        async with _session(settings) as session, session.begin():
            try:
                return await change(session)
            except refusals as error:
                raise CliError(str(error)) from None

    return asyncio.run(run())


def _session(settings: Settings) -> Any:
    from contextlib import asynccontextmanager

    from workmesh.db import create_engine, session_factory

    @asynccontextmanager
    async def scope() -> Any:
        engine = create_engine(settings.database)
        try:
            async with session_factory(engine)() as session:
                yield session
        finally:
            await engine.dispose()

    return scope()


if __name__ == "__main__":
    sys.exit(main())
