"""The proxy's configuration: Kamailio core and tm settings (defaults of 5.6.3) plus the
address it listens on, validated once when built.

A plain frozen value: it must not open sockets, read clocks or hold state.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.events import Address
from core.transaction import TimerSettings


@dataclass(frozen=True)
class ProxyConfig:
    """Kamailio core/tm settings the proxy honours (seconds; defaults of 5.6.3)."""

    address: Address
    fr_timer: float = 30.0
    fr_inv_timer: float = 120.0
    wt_timer: float = 5.0
    max_inv_lifetime: float = 180.0
    max_noninv_lifetime: float = 32.0
    max_branches: int = 12
    auto_inv_100: bool = True
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    tick: float = 0.0625
    label_seed: int = 0

    def __post_init__(self) -> None:
        host, port = self.address
        if not isinstance(host, str) or not host or not isinstance(port, int):
            raise ValueError(f"address must be (host, port), got {self.address!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} outside 1..65535")
        for name in (
            "fr_timer",
            "fr_inv_timer",
            "wt_timer",
            "max_inv_lifetime",
            "max_noninv_lifetime",
            "tick",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_branches < 1:
            raise ValueError(f"max_branches must be >= 1, got {self.max_branches}")
        TimerSettings(self.t1, self.t2, self.t4)  # validates
