"""Notifications for workers with no live channel: a signed webhook and/or an email.

The rule (docs/channels.md, "Which channel"): an assignment goes to the worker's queue, always.
If anything consumes that queue — an AMQP bot, a WebSocket session, a waiting long poll — the
worker is live and gets it there. Only when nothing consumes it is the worker notified, by
webhook and/or email; it then fetches the task over HTTP (short poll) or on the web page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from brokers.errors import Unprocessable
from models import Task, Worker
from models.base import utcnow
from rabbitmq.topology import worker_queue_name
from workmesh.settings import ChannelSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Workmesh-Signature"
# How long the notifier trusts what it read of who wants notices. A change made through this
# process's API is seen at once; one made through another api process, within this time.
NOTICES_TTL = 1.0


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the exact body bytes, keyed with the worker's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookRefused(Exception):
    """The receiver answered, but not with 2xx."""


@dataclass(frozen=True)
class Notice:
    worker: Worker
    body: dict[str, Any]


class Notifier:
    def __init__(
        self,
        settings: ChannelSettings,
        sessions: async_sessionmaker[AsyncSession],
        connection: AbstractRobustConnection,
        http: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.connection = connection
        self.http = http
        self._channel: AbstractRobustChannel | None = None
        self._wants: dict[str, bool] = {}  # worker id → has a webhook or an email
        self._wants_read_at = -NOTICES_TTL

    async def on_assigned(self, task_id: str, worker_id: str) -> None:
        """Notify the worker of an assignment, unless a channel of its is live.

        Raises Unprocessable (→ a dead letter with the reason) when a notification could not be
        delivered after every try.
        """
        # Most workers want no notices at all (bots consuming their queue): a remembered answer
        # settles them with no round trip. For the rest, live first: one AMQP round trip,
        # where the notice costs a database read.
        if not await self.wants_notices(worker_id) or await self.is_live(worker_id):
            return
        notice = await self._notice(task_id, worker_id)
        if notice is None:
            return
        failures: list[str] = []
        if notice.worker.email:
            try:
                await self._email(notice)
            except (OSError, aiosmtplib.SMTPException) as error:
                failures.append(f"email to {notice.worker.email} failed: {error}")
        if notice.worker.webhook_url:
            try:
                await self._webhook(notice)
            except (aiohttp.ClientError, TimeoutError, WebhookRefused) as error:
                failures.append(
                    f"webhook to {notice.worker.webhook_url} failed after "
                    f"{self.settings.webhook_tries} tries: {error or type(error).__name__}"
                )
        if failures:
            raise Unprocessable("; ".join(failures))

    async def wants_notices(self, worker_id: str) -> bool:
        """Has the worker a webhook or an email address? Read for all workers at once, at most
        once per NOTICES_TTL (and for a worker not seen before)."""
        now = time.monotonic()
        if worker_id not in self._wants or now - self._wants_read_at > NOTICES_TTL:
            wants = or_(Worker.webhook_url.is_not(None), Worker.email.is_not(None))
            async with self.sessions() as session:
                rows = await session.execute(select(Worker.id, wants))
            self._wants = {worker: bool(flag) for worker, flag in rows}
            self._wants_read_at = now
        return self._wants.get(worker_id, False)

    def settings_changed(self) -> None:
        """A worker's notification settings changed here: read them all again next time."""
        self._wants_read_at = -NOTICES_TTL

    async def is_live(self, worker_id: str) -> bool:
        """Does anything consume the worker's queue right now?"""
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.connection.channel()
        try:
            # robust=False: a robust channel would answer from its cache of the first declare,
            # and a worker that was live once would stay "live" for this channel's life.
            queue = await self._channel.declare_queue(
                worker_queue_name(worker_id), passive=True, robust=False
            )
        except ChannelNotFoundEntity:
            self._channel = None  # a failed passive declare closes the channel
            return False
        return bool(queue.declaration_result.consumer_count)

    async def _notice(self, task_id: str, worker_id: str) -> Notice | None:
        async with self.sessions() as session:
            worker = await session.get(Worker, worker_id)
            task = await session.get(Task, task_id)
        if worker is None or task is None or not (worker.webhook_url or worker.email):
            return None
        if task.worker_id != worker_id:
            return None  # it moved on before we got to it
        base = self.settings.public_url.rstrip("/")
        body = {
            "event": "task.assigned",
            "delivery": str(uuid.uuid4()),
            "sent_at": utcnow().isoformat(),
            "worker_id": worker_id,
            "task": {
                "task_id": task.id,
                "kind": task.kind,
                "payload": task.payload,
                "priority": task.priority,
                "attempt": task.attempt,
            },
            "fetch": f"{base}/api/v1/worker/tasks",
            "page": f"{base}/app/",
        }
        return Notice(worker, body)

    async def _webhook(self, notice: Notice) -> None:
        url, secret = notice.worker.webhook_url, notice.worker.webhook_secret or ""
        assert url is not None
        raw = json.dumps(notice.body, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, raw),
            "X-Workmesh-Event": "task.assigned",
            "X-Workmesh-Delivery": notice.body["delivery"],
        }
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.settings.webhook_tries),
            wait=wait_exponential(multiplier=self.settings.webhook_backoff, max=60),
            retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError, WebhookRefused)),
            reraise=True,
        ):
            with attempt:
                async with self.http.post(url, data=raw, headers=headers, timeout=timeout) as resp:
                    if resp.status >= 300:
                        raise WebhookRefused(f"HTTP {resp.status}")

    async def _email(self, notice: Notice) -> None:
        if not self.settings.smtp_host:
            log.warning(
                "worker %s has an email address but WORKMESH_CHANNELS_SMTP_HOST is not set",
                notice.worker.id,
            )
            return
        task = notice.body["task"]
        message = EmailMessage()
        message["From"] = self.settings.smtp_sender
        message["To"] = notice.worker.email
        message["Subject"] = (
            f"workmesh: a {task['kind']} task for you (priority {task['priority']})"
        )
        message.set_content(
            f"Task {task['task_id']} ({task['kind']}, priority {task['priority']}) is assigned "
            f"to you, {notice.worker.id}.\n\nTake it on the page: {notice.body['page']}\n"
            f"or over HTTP: GET {notice.body['fetch']}\n\n"
            f"Start it within {self.settings.lease:g} seconds of fetching it, or it goes to "
            "someone else.\n"
        )
        await aiosmtplib.send(
            message, hostname=self.settings.smtp_host, port=self.settings.smtp_port
        )
