"""Test kit: a modelled server on virtual time, fed synthetic in-dialog re-INVITEs.

No SIP parsing on the hot path (messages are built as objects), no network: what the
server sends is captured. Used by the strategy and runtime tests and the runtime benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core.events import Address
from core.runtime.costs import EXACT, CostProfile
from core.runtime.kernel import Kernel, run_on_virtual_time
from core.runtime.server import Server, ServerSettings
from core.sip import SipMessage, SipRequest
from strategies import parse_spec

PROXY: Address = ("127.0.0.1", 5060)
UAC: Address = ("127.0.0.1", 5061)
UAS: Address = ("127.0.0.1", 5062)


def reinvite(call: int, cseq: int = 2, branch_suffix: str = "") -> SipRequest:
    """An in-dialog re-INVITE from the UAC, loose-routed through the proxy to the UAS."""
    call_id = f"call-{call}@uac"
    headers = [
        ("Via", f"SIP/2.0/UDP {UAC[0]}:{UAC[1]};branch=z9hG4bK-{call}-{cseq}{branch_suffix}"),
        ("Max-Forwards", "70"),
        ("Route", f"<sip:{PROXY[0]}:{PROXY[1]};lr>"),
        ("From", f"<sip:alice@{UAC[0]}>;tag=a{call}"),
        ("To", f"<sip:bob@{UAS[0]}>;tag=b{call}"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} INVITE"),
        ("Contact", f"<sip:alice@{UAC[0]}:{UAC[1]}>"),
        ("Content-Length", "0"),
    ]
    return SipRequest("INVITE", f"sip:bob@{UAS[0]}:{UAS[1]}", headers)


@dataclass
class Sent:
    time: float
    message: SipMessage
    destination: Address


@dataclass
class SimRun:
    server: Server
    sent: list[Sent] = field(default_factory=list)

    def relayed(self) -> list[Sent]:
        """Requests the proxy forwarded to the UAS."""
        return [s for s in self.sent if s.destination == UAS and isinstance(s.message, SipRequest)]

    def responses(self, status: int) -> list[Sent]:
        return [s for s in self.sent if getattr(s.message, "status", None) == status]

    def delays(self) -> list[float]:
        return sorted(d.delay for d in self.server.deferrals.values() if d.delay is not None)


def simulate(
    spec: str,
    arrivals: Iterable[float],
    until: float,
    *,
    settings: ServerSettings | None = None,
    costs: CostProfile = EXACT,
) -> SimRun:
    """Run `spec` on virtual time; one re-INVITE (a new dialog each) at every arrival time."""
    run, _ = simulate_probed(spec, arrivals, until, (), settings=settings, costs=costs)
    return run


def simulate_probed(
    spec: str,
    arrivals: Iterable[float],
    until: float,
    probes: Iterable[tuple[float, Callable[[Server], Any]]],
    *,
    settings: ServerSettings | None = None,
    costs: CostProfile = EXACT,
) -> tuple[SimRun, list[tuple[float, Any]]]:
    """As `simulate`, also calling `probe(server)` at each probe's virtual time.

    Returns the run and `[(time, probe result)]` in time order: for quantities that change
    during a run (queue depth, a process's wake-ups) rather than what is left at the end.
    """
    run: SimRun | None = None
    results: list[tuple[float, Any]] = []

    async def main() -> None:
        nonlocal run
        kernel = Kernel()
        sent: list[Sent] = []
        server = Server(
            kernel,
            parse_spec(spec),
            settings or ServerSettings(cores=2),
            costs,
            transport=lambda message, dest: sent.append(Sent(kernel.now, message, dest)),
        )
        run = SimRun(server, sent)
        for call, at in enumerate(sorted(arrivals)):
            kernel.call_at(at, server.receive, reinvite(call), UAC)
        for at, probe in sorted(probes, key=lambda p: p[0]):
            kernel.call_at(at, lambda probe=probe: results.append((kernel.now, probe(server))))
        await kernel.run(until=until)

    run_on_virtual_time(main)
    assert run is not None
    return run, results
