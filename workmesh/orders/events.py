"""The ``orders.<instance>.changed.<n>`` event: "this order's snapshot must reach the peer",
and the names of the orders capability's queues.

Every name carries the instance (A, B...), so two instances can share one vhost (compose)
as well as use a vhost each (``workmesh orders pair``). Sharded by order id: shard n goes to
sync queue n, so orders sync in parallel while each order's snapshots go out in order.
"""

from __future__ import annotations

import zlib

from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from pydantic import BaseModel

from rabbitmq.topology import EVENTS_EXCHANGE

EVENTS = RabbitExchange(EVENTS_EXCHANGE, type=ExchangeType.TOPIC, durable=True, declare=False)


class OrderChanged(BaseModel):
    id: str
    rev: int


def shard_of(order_id: str, shards: int) -> int:
    return zlib.crc32(order_id.encode()) % shards


def changed_key(instance: str, shard: int) -> str:
    return f"orders.{instance}.changed.{shard}"


def sync_queue(instance: str, shard: int) -> str:
    return f"workmesh.orders.{instance}.sync.{shard}"


def sweep_queue(instance: str) -> str:
    return f"workmesh.orders.{instance}.sweep"


def pull_queue(instance: str) -> str:
    return f"workmesh.orders.{instance}.pull"


async def publish_changed(
    broker: RabbitBroker, instance: str, order_id: str, rev: int, shards: int
) -> None:
    await broker.publish(
        OrderChanged(id=order_id, rev=rev),
        exchange=EVENTS,
        routing_key=changed_key(instance, shard_of(order_id, shards)),
        persist=True,
    )
