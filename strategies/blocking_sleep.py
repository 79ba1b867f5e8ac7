"""`blocking-sleep:ms=10`: the naive anti-pattern, `usleep(ms*1000)` in the SIP worker.

cfgutils `usleep()` is `sleep_us()`, a `select()` (reference §9): the worker is blocked in the
kernel for ms + ε, holding no CPU and reading nothing else, then relays the request itself.
The `children` workers share one UDP socket, so capacity is ≈ children / (sleep + service)
requests per second; above it requests wait in the receive buffer (latency grows linearly)
until `maxbuffer` is full and the kernel drops them.

Nothing is suspended: the "deferral" recorded for the ledger is the sleep itself (start of
`usleep()` -> the script continuing), so D = ms + ε at any load while the queueing before it
shows in end-to-end latency, not in D. Waking from the sleep costs the worker CPU of its own
(`sleep_wake`: the wake-up, and the relay after it running with cold caches).

What it must not do: suspend the transaction, or use any process but the SIP worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.runtime.process import Compute, Process, Program, Sleep
from strategies.base import Strategy
from strategies.inline import routing_script, trace_line
from strategies.spec import Param

if TYPE_CHECKING:
    from core.events import TxnId
    from core.runtime.server import Server, ServerSettings


class BlockingSleep(Strategy):
    """The SIP worker sleeps `ms` (select(), no CPU), then relays in the same worker."""

    name = "blocking-sleep"
    summary = "usleep(ms*1000) in the SIP worker, then t_relay(): blocks the worker (anti-pattern)"
    params = (
        Param(
            "ms",
            "int",
            10,
            "milliseconds the SIP worker sleeps in cfgutils usleep() before relaying",
            minimum=0,
            maximum=60_000,
        ),
    )

    @property
    def requested_delay(self) -> float:
        return self.values["ms"] / 1000

    def defer(self, server: Server, process: Process, txn: TxnId) -> Program:
        from core.runtime.server import Deferral  # the server module needs the proxy core

        started = server.now
        yield Sleep(self.values["ms"] / 1000 + server.overshoot())
        request = server.proxy.request_of(txn)
        server.record(
            Deferral(
                txn,
                started,
                call_id=request.call_id if request is not None else "",
                cseq=request.cseq.number if request is not None else 0,
                resumed_at=server.now,
                resumed_by=process.name,
                outcome="resumed",
                resumes=1,
            )
        )
        wake = server.costs.seconds("sleep_wake")  # the wake-up and the cold relay after it
        if wake:
            yield Compute(wake)
        yield from server.relay_now(process, txn)

    def kamailio_config(self, settings: ServerSettings | None = None, trace: bool = False) -> str:
        us = self.values["ms"] * 1000
        return routing_script(
            spec=self.spec,
            about=[
                f"Blocking sleep: usleep({us}) in the SIP worker, then t_relay() from it.",
                "The worker is blocked in select() for the whole sleep (no CPU, no other",
                "request); the `children` workers share one UDP socket, so capacity is about",
                "children / (sleep + service) requests/s. Above it requests queue in the",
                "receive buffer (latency grows linearly) until maxbuffer is full and the",
                "kernel drops them; UAC retransmissions then add load. A sleep inside the",
                "reply lock (failure_route, continuation) would block every worker touching",
                "that transaction too.",
            ],
            defer=(
                (trace_line("suspend") if trace else "")
                + f"\t# blocks THIS SIP worker for {self.values['ms']} ms + sleep overshoot\n"
                f"\tusleep({us});\n" + (trace_line("resume") if trace else "") + "\troute(RELAY);"
            ),
            settings=settings,
            modules=("cfgutils",),
        )


STRATEGY = BlockingSleep
