"""The vm test plugin's rerun of a few failed tests in a fresh boot (no VM booted)."""

from types import SimpleNamespace
from typing import Any

from tests.vmguest import RERUN_MAX, GuestOutcome, GuestSession


class FakeBoots(GuestSession):
    """Each boot's outcomes come from `plans`, one dict of nodeid -> passed per boot."""

    def __init__(self, nodeids: list[str], plans: list[dict[str, bool]]) -> None:
        items: Any = [SimpleNamespace(nodeid=n, get_closest_marker=lambda name: None,
                                      config=SimpleNamespace(getoption=lambda opt: ""))
                      for n in nodeids]
        super().__init__(items)
        self.plans = plans
        self.boots: list[list[str]] = []

    def _run(self, items: Any, topology: str, suffix: str = "") -> dict[str, GuestOutcome]:
        plan = self.plans[len(self.boots)]
        self.boots.append([i.nodeid for i in items])
        return {i.nodeid: GuestOutcome(plan[i.nodeid], "" if plan[i.nodeid] else
                                       f"E   assert boot {len(self.boots)}", "", 1.0)
                for i in items}


def outcome(session: GuestSession, item: Any) -> GuestOutcome:
    got = session.outcome(item)
    assert got is not None
    return got


def test_a_failed_test_passing_in_a_fresh_boot_passes_and_is_listed():
    session = FakeBoots(["a", "b", "c"], [{"a": True, "b": False, "c": False},
                                          {"b": True, "c": False}])
    outcomes = {n: outcome(session, i) for n, i in zip("abc", session.items, strict=True)}
    assert session.boots == [["a", "b", "c"], ["b", "c"]]
    assert outcomes["a"].passed and outcomes["b"].passed and not outcomes["c"].passed
    assert session.flaky == {"b": "E   assert boot 1"}
    assert "assert boot 1" in outcomes["c"].text and "assert boot 2" in outcomes["c"].text


def test_many_failures_are_not_run_again():
    names = [str(n) for n in range(RERUN_MAX + 1)]
    session = FakeBoots(names, [dict.fromkeys(names, False)])
    assert not any(outcome(session, i).passed for i in session.items)
    assert len(session.boots) == 1 and not session.flaky
