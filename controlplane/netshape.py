"""The batch tier's egress yields the link: an HTB hierarchy on a device (pyroute2).

The device's root qdisc becomes HTB with two leaf classes under one root
class shaped to the link rate: the rest (default class, priority 0,
guaranteed `share_pct` of the link) and the batch class (priority 7,
guaranteed the remainder, borrowing up to its ceiling). Lower priority
borrows last, so batch packets use only what the other tiers leave, and
the rest never waits behind more than one batch packet. The link rate sits
below the device's speed (LINK_HEADROOM) so that the queue forms here, not
in the device. Batch packets reach their class by skb->priority, which
controlplane.skbprio sets to BATCH_CLASS; HTB takes a priority equal to one
of its leaf class ids as the class, so no filter is needed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scx_gpu.errors import EnvironmentProblem, UsageError

if TYPE_CHECKING:  # imported when used: it takes a second to import, and most runs shape nothing
    from pyroute2 import IPRoute

HANDLE = 0x5C470000            # our root qdisc, "5c47:"
ROOT_CLASS = HANDLE | 0x1
NORMAL_CLASS = HANDLE | 0x10   # every tier but batch (the default class)
BATCH_CLASS = HANDLE | 0x20
NORMAL_PRIO, BATCH_PRIO = 0, 7
LINK_HEADROOM = 0.95           # of the device's speed, when no link rate is given
QUANTUM_BYTES = 3028           # two full-size frames per round among equal priorities
MIN_BURST_BYTES = 3028         # two full-size frames
# A class sends at most this much of its ceiling at once: bursts past the
# link's own would queue downstream, where priority no longer holds.
BURST_S = 1e-4
SYS_NET = Path("/sys/class/net")
SYS_MODULE = Path("/sys/module")
MODULES = Path("/lib/modules")
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
RATE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?bit)", re.IGNORECASE)


def parse_rate(text: str, what: str) -> int:
    """Bits per second from '100mbit', '2.5gbit', '800kbit'."""
    match = RATE_RE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{what} {text!r}: a rate such as 800kbit, 100mbit or 10gbit")
    bps = int(float(match.group(1)) * RATE_UNITS[match.group(2).lower()])
    if bps < 8000:
        raise UsageError(f"{what} {text!r}: must be at least 8kbit")
    return bps


@dataclass(frozen=True)
class Plan:
    """The hierarchy for one device, in bits per second."""

    dev: str
    link_bps: int
    share_pct: int
    batch_ceil_bps: int

    @property
    def normal_bps(self) -> int:
        return self.link_bps * self.share_pct // 100

    @property
    def batch_bps(self) -> int:
        return max(self.link_bps - self.normal_bps, 8000)

    def as_dict(self) -> dict[str, object]:
        return {"dev": self.dev, "link_bps": self.link_bps, "rest_guaranteed_bps":
                self.normal_bps, "batch_guaranteed_bps": self.batch_bps,
                "batch_ceil_bps": self.batch_ceil_bps}


def htb_available(sys_module: Path = SYS_MODULE, modules: Path = MODULES) -> bool:
    """Whether this kernel has sch_htb: built in or loaded (its parameters show in
    sysfs), or a module it can load."""
    if (sys_module / "sch_htb").is_dir():
        return True
    return any((modules / os.uname().release).glob("kernel/net/sched/sch_htb.ko*"))


def default_route_dev(ipr: IPRoute) -> str:
    """The device of the IPv4 (else IPv6) default route."""
    for family in (2, 10):  # AF_INET, AF_INET6
        for route in ipr.get_default_routes(family=family):
            oif = route.get_attr("RTA_OIF")
            if oif:
                return str(ipr.get_links(oif)[0].get_attr("IFLA_IFNAME"))
    raise UsageError("no default route to find the batch tier's network device: "
                     "name it with --net-dev")


def device_speed_bps(dev: str, sys_net: Path = SYS_NET) -> int:
    """The device's link speed (sysfs, Mbit/s); unknown for many virtual devices."""
    try:
        mbit = int((sys_net / dev / "speed").read_text())
    except (OSError, ValueError):
        mbit = -1
    if mbit <= 0:
        raise UsageError(f"{dev} does not report its speed: give the link rate with "
                         "--net-link-rate (e.g. 10gbit)")
    return mbit * 10**6


def plan(ipr: IPRoute, dev: str, link_rate: str, share_pct: int, batch_rate: str,
         sys_net: Path = SYS_NET) -> Plan:
    _index(ipr, dev)
    link = (parse_rate(link_rate, "net_link_rate") if link_rate
            else int(device_speed_bps(dev, sys_net) * LINK_HEADROOM))
    ceil = parse_rate(batch_rate, "batch_net_rate") if batch_rate else link
    if ceil > link:
        raise UsageError(f"batch_net_rate {batch_rate} exceeds the link rate of {dev} "
                         f"({link // 10**6} Mbit/s): lower it or raise --net-link-rate")
    return Plan(dev, link, share_pct, ceil)


def _index(ipr: IPRoute, dev: str) -> int:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise UsageError(f"network device {dev!r} does not exist here: choose one of "
                         f"{', '.join(sorted(_names(ipr)))}")
    return int(found[0])


def _names(ipr: IPRoute) -> list[str]:
    return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]


def _root_qdisc(ipr: IPRoute, index: int) -> tuple[str, int] | None:
    """(kind, handle) of the device's root qdisc."""
    for qdisc in ipr.get_qdiscs(index):
        if qdisc["parent"] == 0xFFFFFFFF:
            return str(qdisc.get_attr("TCA_KIND")), int(qdisc["handle"])
    return None


def _check_free(ipr: IPRoute, index: int, dev: str) -> None:
    """Refuse to replace an operator's qdisc (the kernel's default has handle 0;
    ours, left by a killed loader, goes)."""
    root = _root_qdisc(ipr, index)
    if root and root[1] not in (0, HANDLE):
        raise EnvironmentProblem(
            f"{dev} already has a root qdisc ({root[0]} {root[1] >> 16:x}:) that scx-gpu "
            f"would replace: remove it (`tc qdisc del dev {dev} root`) or leave {dev} out")


def _bytes(bps: int) -> int:
    return bps // 8


def _burst(ceil_bps: int, seconds: float) -> int:
    return max(int(_bytes(ceil_bps) * seconds), MIN_BURST_BYTES)


def _install(ipr: IPRoute, index: int, p: Plan) -> None:
    ipr.tc("replace", "htb", index, HANDLE, default=NORMAL_CLASS & 0xFFFF)  # the default
    link_burst = _burst(p.link_bps, BURST_S)
    ipr.tc("add-class", "htb", index, ROOT_CLASS, parent=HANDLE, rate=_bytes(p.link_bps),
           ceil=_bytes(p.link_bps), burst=link_burst, cburst=link_burst)
    ipr.tc("add-class", "htb", index, NORMAL_CLASS, parent=ROOT_CLASS,
           rate=_bytes(p.normal_bps), ceil=_bytes(p.link_bps), prio=NORMAL_PRIO,
           quantum=QUANTUM_BYTES, burst=link_burst, cburst=link_burst)
    batch_burst = _burst(p.batch_ceil_bps, BURST_S)
    ipr.tc("add-class", "htb", index, BATCH_CLASS, parent=ROOT_CLASS,
           rate=_bytes(p.batch_bps), ceil=_bytes(p.batch_ceil_bps), prio=BATCH_PRIO,
           quantum=QUANTUM_BYTES, burst=batch_burst, cburst=batch_burst)


def route() -> IPRoute:
    """A netlink route socket (a context manager)."""
    from pyroute2 import IPRoute
    return IPRoute()


def shape(ipr: IPRoute, p: Plan) -> Callable[[], None]:
    """Install the hierarchy on p.dev; returns its undo (the device's default qdisc back)."""
    from pyroute2.netlink.exceptions import NetlinkError
    index = _index(ipr, p.dev)
    _check_free(ipr, index, p.dev)
    undo = _remover(ipr, index)
    undo()  # a killed loader's hierarchy, classes and all
    try:
        _install(ipr, index, p)
    except NetlinkError as exc:
        undo()
        raise EnvironmentProblem(f"cannot install the HTB hierarchy on {p.dev}: "
                                 f"{exc.args[-1]} (does the kernel have sch_htb?)") from exc
    return undo


def remove(ipr: IPRoute, dev: str) -> None:
    """dev's root qdisc, if scx-gpu's, removed (a killed loader's hierarchy)."""
    found = ipr.link_lookup(ifname=dev)
    if found:
        _remover(ipr, int(found[0]))()


def _remover(ipr: IPRoute, index: int) -> Callable[[], None]:
    def remove() -> None:
        root = _root_qdisc(ipr, index)
        if root and root[1] == HANDLE:  # classes and leaves go with it
            ipr.tc("del", index=index, handle=HANDLE, parent=0xFFFFFFFF)
    return remove
