"""Benchmark: one in-dialog re-INVITE transaction through the Proxy (re-INVITE in, 100 and
relay out, 200 back, ACK forwarded statelessly), as the live target runs it.

Run: python -m pytest tests/benchmarks/test_bench_proxy.py --benchmark-only -p no:cacheprovider

Each round gets fresh messages built (untimed) by a shadow proxy with the same config, which
produces the same branches, so the 200 matches the timed proxy's client transaction.
Virtual time advances 1 ms a round and `expire` runs every round, so the wait timer frees
old transactions as it would at 1000 re-INVITEs/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wire import ALICE, BOB, PROXY, ack_for_2xx, answer, request  # noqa: E402

from core.events import Deliver, Send  # noqa: E402
from core.proxy import Proxy, ProxyConfig  # noqa: E402
from core.sip import SipMessage, parse_message  # noqa: E402

CONFIG = ProxyConfig(PROXY)
RR = "<sip:10.0.0.1:5060;lr>"
SDP = (
    b"v=0\r\no=- 1 2 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\n"
    b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)


class ReinviteFeed:
    """Builds the bytes of the n-th re-INVITE transaction (one dialog per 50 re-INVITEs)."""

    def __init__(self) -> None:
        self.shadow = Proxy(CONFIG)
        self.n = 0
        self.now = 0.0

    def next(self) -> tuple[bytes, bytes, bytes, float]:
        self.n += 1
        self.now += 0.001
        now, shadow = self.now, self.shadow
        invite = request(
            "INVITE",
            call_id=f"dialog-{self.n // 50}@10.0.0.2",
            cseq=self.n,
            to_tag="bob-tag",
            routes=(RR,),
            body=SDP,
        )
        data = bytes(invite)
        deliver = shadow.receive(data, ALICE, now)[0]
        assert isinstance(deliver, Deliver) and deliver.txn is not None
        relayed = [a.message for a in shadow.relay(deliver.txn, now) if a.destination == BOB]
        ok = bytes(answer(relayed[0], 200, body=SDP))
        forwarded = shadow.receive(ok, BOB, now)[0].message
        ack = bytes(ack_for_2xx(invite, parse_message(bytes(forwarded))))
        shadow.forward_stateless(shadow.receive(ack, ALICE, now)[0].request, now)
        shadow.expire(now)
        return data, ok, ack, now


def run_bytes(proxy: Proxy, invite: bytes, ok: bytes, ack: bytes, now: float) -> int:
    """Datagrams in, datagrams out: what the live target does per re-INVITE."""
    deliver = proxy.receive(invite, ALICE, now)[0]
    out = proxy.relay(deliver.txn, now)
    out += proxy.receive(ok, BOB, now)
    out += proxy.forward_stateless(proxy.receive(ack, ALICE, now)[0].request, now)
    out += proxy.expire(now)
    sent = 0
    for action in out:
        sent += len(bytes(action.message))
    return sent


def run_parsed(
    proxy: Proxy, invite: SipMessage, ok: SipMessage, ack: SipMessage, now: float
) -> list:
    """Pre-parsed messages in, actions out (no parsing, no serialising)."""
    deliver = proxy.receive_message(invite, ALICE, now)[0]
    out = proxy.relay(deliver.txn, now)
    out += proxy.receive_message(ok, BOB, now)
    out += proxy.forward_stateless(proxy.receive_message(ack, ALICE, now)[0].request, now)
    out += proxy.expire(now)
    return out


@pytest.mark.benchmark(group="proxy re-INVITE transaction")
def test_reinvite_transaction_bytes(benchmark):
    proxy, feed = Proxy(CONFIG), ReinviteFeed()

    def setup():
        return (proxy, *feed.next()), {}

    sent = benchmark.pedantic(run_bytes, setup=setup, rounds=3000, warmup_rounds=200)
    assert sent > 0
    stats = proxy.stats()
    assert stats["relayed"] == stats["forwarded_stateless"] == 3200
    assert stats.get("discarded", 0) == 0


@pytest.mark.benchmark(group="proxy re-INVITE transaction")
def test_reinvite_transaction_preparsed(benchmark):
    proxy, feed = Proxy(CONFIG), ReinviteFeed()

    def setup():
        invite, ok, ack, now = feed.next()
        return (proxy, parse_message(invite), parse_message(ok), parse_message(ack), now), {}

    out = benchmark.pedantic(run_parsed, setup=setup, rounds=3000, warmup_rounds=200)
    assert [type(a) for a in out] == [Send, Send, Send, Send]  # 100, INVITE, 200, ACK
    stats = proxy.stats()
    assert stats["relayed"] == stats["forwarded_stateless"] == 3200
    assert stats.get("discarded", 0) == 0
