"""The live proxy's admission control, in process and in virtual time: what is shed, what is
counted, what is still served. The OS (receive-buffer bytes, RSS) is injected, so nothing
here depends on the machine's speed or memory."""

from __future__ import annotations

import pytest
from wire import ALICE, ack_for_error, request

from core.runtime.kernel import Kernel
from core.runtime.server import ServerSettings
from core.sip import SipMessage, SipResponse
from harness.cli import main
from harness.targets.live.admission import (
    MEMORY_CHECK_PERIOD,
    OS_DATAGRAM_FOOTPRINT,
    RETRY_AFTER,
    SHED_ACK,
    SHED_MEMORY,
    SHED_QUEUE,
    SHED_TAG,
    AdmissionLimits,
    LiveServer,
    MemoryBudget,
)
from harness.targets.live.serve import LIVE_COSTS
from strategies import parse_spec

SINK = "sip:sink@10.0.0.9:5070"  # where relayed requests go (nobody answers)


class Rig:
    """A LiveServer on a virtual-time kernel; what it sends is kept, the OS is faked."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.kernel = Kernel()
        self.sent: list[tuple[SipMessage, tuple[str, int]]] = []
        self.queued_bytes = 0
        self.rss = 100.0
        self.server = LiveServer(
            self.kernel, parse_spec("inline"), ServerSettings(children=2), LIVE_COSTS,
            lambda message, destination: self.sent.append((message, destination)),
            limits=limits, os_queued_bytes=lambda: self.queued_bytes, rss_mb=lambda: self.rss,
        )  # fmt: skip
        self.kernel.run_due(0.0)

    def receive(self, message: SipMessage) -> list[SipMessage]:
        """Hand `message` in as a datagram from ALICE, run what it made due; what went out."""
        before = len(self.sent)
        self.server.receive(bytes(message), ALICE)
        self.kernel.run_due(self.kernel.now)
        return [m for m, _ in self.sent[before:]]

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass (as the live driver does: the clock moves on, due work runs)."""
        until = self.kernel.now + seconds
        self.kernel.run_due(until)
        self.kernel.now = until

    @property
    def created(self) -> int:
        return self.server.proxy.stats().get("transactions_created", 0)


def _only_503(out: list[SipMessage]) -> SipResponse:
    assert len(out) == 1 and isinstance(out[0], SipResponse), out
    response = out[0]
    assert response.status == 503
    assert response.get("Retry-After") == str(RETRY_AFTER)
    assert response.to_tag == SHED_TAG.decode()
    return response


def test_a_full_queue_sheds_new_dialogs_absorbs_their_acks_and_serves_dialogs():
    rig = Rig(AdmissionLimits(max_queue=3))
    rig.queued_bytes = 3 * OS_DATAGRAM_FOOTPRINT  # three datagrams waiting in the OS buffer
    invite = request("INVITE", SINK, call_id="new-1")
    response = _only_503(rig.receive(invite))
    assert rig.created == 0  # no transaction for a shed request
    assert rig.receive(ack_for_error(invite, response)) == []  # absorbed, not relayed
    assert rig.server.counters[SHED_QUEUE] == 1
    assert rig.server.counters[SHED_ACK] == 1
    # a request inside a dialog (To tag) is served: the call it belongs to was admitted
    bye = request("BYE", SINK, call_id="old-1", cseq=3, to_tag="bob-tag")
    relayed = rig.receive(bye)
    assert [m.method for m in relayed if not isinstance(m, SipResponse)] == ["BYE"]
    assert rig.created == 1
    assert rig.server.shed_total() == 1


def test_a_new_dialog_is_served_once_the_queue_drains():
    rig = Rig(AdmissionLimits(max_queue=3))
    rig.queued_bytes = 5 * OS_DATAGRAM_FOOTPRINT
    _only_503(rig.receive(request("INVITE", SINK, call_id="early")))
    rig.queued_bytes = 2 * OS_DATAGRAM_FOOTPRINT  # below the limit
    out = rig.receive(request("INVITE", SINK, call_id="late"))
    assert "INVITE" in [getattr(m, "method", None) for m in out]  # relayed
    assert rig.created == 1
    assert rig.server.counters[SHED_QUEUE] == 1


def test_the_queue_depth_counts_the_os_buffer_the_udp_queue_and_the_backlog(monkeypatch):
    rig = Rig(AdmissionLimits())
    rig.queued_bytes = 7 * OS_DATAGRAM_FOOTPRINT + 1
    for _ in range(3):  # two go to the idle workers, the third waits in the queue
        rig.server.sip_socket.offer((b"x", ALICE))
    monkeypatch.setattr(rig.server.strategy, "backlog", lambda server: 2)
    assert rig.server.queue_depth() == 7 + 1 + 2


def test_memory_above_the_ceiling_sheds_new_dialogs_until_it_falls():
    rig = Rig(AdmissionLimits(max_rss_mb=512, memory_floor=0))
    rig.rss = 600.0  # the fake reader: no memory is allocated for this
    _only_503(rig.receive(request("INVITE", SINK, call_id="m-1")))
    assert rig.server.counters[SHED_MEMORY] == 1 and rig.created == 0
    rig.rss = 400.0
    _only_503(rig.receive(request("INVITE", SINK, call_id="m-2")))  # not read again yet
    rig.advance(MEMORY_CHECK_PERIOD)
    out = rig.receive(request("INVITE", SINK, call_id="m-3"))
    assert "INVITE" in [getattr(m, "method", None) for m in out]
    assert rig.server.counters[SHED_MEMORY] == 2 and rig.created == 1


def test_the_memory_budget_freezes_tightens_and_lifts():
    budget = MemoryBudget(ceiling_mb=1000, floor=10)
    budget.update(900, live=500)
    assert budget.budget is None and not budget.full(10**6)
    budget.update(1000, live=500)  # at the ceiling: no more than what lives now
    assert budget.full(500) and not budget.full(499)
    budget.update(1005, live=300)  # RSS grew by less than MEMORY_GROWTH: unchanged
    assert budget.budget == 500
    budget.update(1100, live=300)  # still growing: tightened to what lives now
    assert budget.budget == 300
    budget.update(1200, live=2)  # never below the floor
    assert budget.budget == 10
    budget.update(999, live=2)  # under the ceiling: lifted
    assert budget.budget is None


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--max-queue", "0"], "max queue"),
        (["--max-queue", "many"], "--max-queue"),
        (["--max-rss", "10"], "max RSS"),
        (["--max-rss", "nan"], "max RSS"),
        (["--max-rss", "lots"], "--max-rss"),
        (["--max-transactions", "0"], "max transactions"),
    ],
)
def test_bad_admission_flags_are_one_line_errors(capsys, flags, needle):
    try:
        code = main(["serve", "--strategy", "inline", "--listen", "127.0.0.1:0", *flags])
    except SystemExit as exc:  # argparse's own errors (not a number)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
