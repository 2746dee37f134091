"""The vm test plugin's fresh boots: after a guest panic, and for a few failed tests
(no VM booted)."""

from types import SimpleNamespace
from typing import Any

from scx_gpu.vm.runner import EXIT_PANIC
from tests.vmguest import RERUN_MAX, RESUME_MAX, GuestOutcome, GuestSession

PANIC = "panic"
OOPS = "Oops: int3: 0000 [#1] SMP NOPTI"


class FakeBoots(GuestSession):
    """Each boot's outcomes come from `plans`, one dict of nodeid -> passed per boot, or
    PANIC: the guest kernel panics during that test and runs none after it."""

    def __init__(self, nodeids: list[str], plans: list[dict[str, bool | str]]) -> None:
        items: Any = [SimpleNamespace(nodeid=n, get_closest_marker=lambda name: None,
                                      config=SimpleNamespace(getoption=lambda opt: ""))
                      for n in nodeids]
        super().__init__(items)
        self.plans = plans
        self.boots: list[list[str]] = []

    def _run(self, items: Any, topology: str, suffix: str = "") -> dict[str, GuestOutcome]:
        plan = self.plans[len(self.boots)]
        self.boots.append([i.nodeid for i in items])
        self.exit_code, self.running, self.console = 0, None, ""
        outcomes = {}
        for i in items:
            if plan[i.nodeid] == PANIC:
                self.exit_code, self.running, self.console = EXIT_PANIC, i.nodeid, f"[ 9.1] {OOPS}"
                self.unfinished[i.nodeid] = "the VM stopped before this test finished"
                break
            outcomes[i.nodeid] = GuestOutcome(bool(plan[i.nodeid]), "" if plan[i.nodeid] else
                                              f"E   assert boot {len(self.boots)}", "", 1.0)
        return outcomes


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


def test_after_a_guest_panic_the_rest_go_on_in_a_fresh_boot():
    session = FakeBoots(["a", "b", "c", "d"], [{"a": True, "b": PANIC, "c": True, "d": True},
                                               {"c": True, "d": False},
                                               {"b": True, "d": False}])
    outcomes = {n: outcome(session, i) for n, i in zip("abcd", session.items, strict=True)}
    assert session.boots == [["a", "b", "c", "d"], ["c", "d"], ["b", "d"]]
    assert outcomes["a"].passed and outcomes["b"].passed and outcomes["c"].passed
    assert not outcomes["d"].passed
    first_line = session.flaky["b"].splitlines()[0]
    assert first_line == f"the guest kernel panicked while this test ran: [ 9.1] {OOPS}"


def test_a_guest_that_panics_again_and_again_is_given_up():
    names = ["a", "b", "c", "d", "e"]
    boots = RESUME_MAX + 1
    session = FakeBoots(names, [dict.fromkeys(names, PANIC)] * (boots + 1))
    assert session.outcome(session.items[0]) is not None
    crashed = names[:boots]
    assert session.boots == [names[n:] for n in range(boots)] + [crashed]  # + their rerun
    assert sorted(session.outcomes) == crashed  # the rest: no result
    assert not any(outcome.passed for outcome in session.outcomes.values())
