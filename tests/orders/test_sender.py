"""The per-shard batch sender: batches gather while one is on its way, one batch at a time,
an order named again during its batch goes again, and a failure reaches every waiter."""

from __future__ import annotations

import asyncio

import pytest

from workmesh.orders.sender import BatchSender


class Peer:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.fail = fail

    async def send(self, order_ids: list[str]) -> None:
        self.batches.append(order_ids)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
            if self.fail:
                raise OSError("the peer is down")
        finally:
            self.in_flight -= 1


async def test_a_lone_change_goes_at_once_and_the_rest_gather_behind_it() -> None:
    peer = Peer()
    sender = BatchSender(peer.send, batch_size=3)
    first = asyncio.create_task(sender.submit("a"))
    await asyncio.sleep(0.01)
    assert peer.batches == [["a"]]
    rest = [asyncio.create_task(sender.submit(o)) for o in ("b", "c", "a", "d", "e")]
    await asyncio.sleep(0.01)
    assert not first.done()

    peer.release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    # "a" again during its batch: sent again after. Batches of at most 3, one at a time.
    assert peer.batches == [["a"], ["b", "c", "a"], ["d", "e"]]
    assert peer.most_in_flight == 1


async def test_the_same_order_twice_in_a_batch_is_sent_once() -> None:
    peer = Peer()
    peer.release.set()
    sender = BatchSender(peer.send, batch_size=10)
    await asyncio.gather(*(sender.submit(o) for o in ("x", "y", "x", "x")))
    assert sorted(o for batch in peer.batches for o in batch) == ["x", "y"]


async def test_a_failed_batch_fails_each_of_its_waiters() -> None:
    peer = Peer(fail=True)
    peer.release.set()
    sender = BatchSender(peer.send, batch_size=10)
    results = await asyncio.gather(sender.submit("a"), sender.submit("b"), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    # The sender goes on after a failure.
    peer.fail = False
    await asyncio.wait_for(sender.submit("c"), 5)
    assert peer.batches[-1] == ["c"]


@pytest.mark.parametrize("batch_size", [1, 2])
async def test_batch_size_is_a_limit(batch_size: int) -> None:
    peer = Peer()
    peer.release.set()
    sender = BatchSender(peer.send, batch_size=batch_size)
    await asyncio.gather(*(sender.submit(str(n)) for n in range(5)))
    assert max(len(b) for b in peer.batches) == batch_size
    assert sorted(o for b in peer.batches for o in b) == [str(n) for n in range(5)]
