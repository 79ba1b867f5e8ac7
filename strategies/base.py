"""The one small interface every deferral strategy implements.

A strategy is what the Kamailio script does with an in-dialog re-INVITE it wants to defer:
`defer()` runs in the SIP worker that received it (suspend, enqueue...), `install()` forks
the processes that will resume it (timers, task workers). Strategies act only through the
`Server` (suspend, resume, spawn, task groups, costs) and the process ops; they never know
whether time is virtual or real, and never touch the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from strategies.spec import Param, SpecError

if TYPE_CHECKING:
    from core.events import TxnId
    from core.runtime.process import Process, Program
    from core.runtime.server import Server, ServerSettings


class Strategy(ABC):
    """A deferral strategy with validated parameters (see `strategies.parse_spec`)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `deferbench strategies`
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, **values: Any) -> None:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SpecError(
                f"{self.name}: unknown parameter {', '.join(unknown)} "
                f"(allowed: {self.allowed_params()})"
            )
        self.values: dict[str, Any] = {}
        for param in self.params:
            value = values.get(param.name, param.default)
            param.check(value)
            self.values[param.name] = value
        self.validate()

    # ------------------------------------------------------------------ description

    @classmethod
    def allowed_params(cls) -> str:
        return ", ".join(p.name for p in cls.params) or "none"

    @property
    def spec(self) -> str:
        """Canonical spec with every parameter, e.g. 'blocking-sleep:ms=10'."""
        shown = [
            f"{p.name}={p.format(self.values[p.name])}"
            for p in self.params
            if self.values[p.name] is not None
        ]
        return self.name + (":" + ",".join(shown) if shown else "")

    @property
    def short_spec(self) -> str:
        """The spec with only the parameters that differ from their defaults, e.g.
        'mqueue-rtimer:min_age=10ms': what a table narrow enough to read shows."""
        shown = [
            f"{p.name}={p.format(self.values[p.name])}"
            for p in self.params
            if self.values[p.name] is not None and self.values[p.name] != p.default
        ]
        return self.name + (":" + ",".join(shown) if shown else "")

    @property
    def model(self) -> str:
        """What the sim runs for this spec: two specs with the same model give the same sim
        figures, so a deterministic target runs them once (`harness.runner.execute`). The
        canonical spec, unless strategies share one model under different script calls."""
        return self.spec

    def __repr__(self) -> str:
        return f"<Strategy {self.spec}>"

    def validate(self) -> None:
        """Cross-parameter checks; raise SpecError naming the conflict."""
        return None

    # ------------------------------------------------------------------ behaviour

    @property
    @abstractmethod
    def requested_delay(self) -> float:
        """Seconds the operator asked for: lateness and the early share are measured against it."""

    def install(self, server: Server) -> None:
        """Fork this strategy's processes and create its shared state on `server`."""
        return None

    def backlog(self, server: Server) -> int:
        """Deferred requests waiting in this strategy's own queues on `server` (for the
        queue-depth figure). Strategies without a queue of their own have none: requests a
        blocked SIP worker has not read yet wait in the UDP socket, counted separately."""
        return 0

    @abstractmethod
    def defer(self, server: Server, process: Process, txn: TxnId) -> Program:
        """The script's deferral of transaction `txn`, run in SIP worker `process`."""

    @abstractmethod
    def kamailio_config(self, settings: ServerSettings | None = None, trace: bool = False) -> str:
        """The complete kamailio.cfg this strategy models, generated from its parameters and
        the server `settings` (listen address, children, fr_timer). `trace` adds the xlog
        lines the kamailio target parses (suspend/resume per transaction); off by default so
        the cfg a user copies stays clean."""
