"""The fallback's gpu budgets, on a fake clock and fake run times."""

from scx_gpu.controlplane.gpubudget import GpuBudget


class FakeThreads:
    """Threads of processes, each running `share` of a CPU while the clock moves."""

    def __init__(self, procs: dict[int, dict[int, float]]) -> None:
        self.procs = procs  # tgid -> {tid: share of one CPU}
        self.now = 0.0
        self.ran = {tid: 0.0 for tid in self.tids()}

    def advance(self, step: float) -> None:
        for threads in self.procs.values():
            for tid, share in threads.items():
                self.ran[tid] += share * step
        self.now += step

    def tgid(self, tid: int) -> int | None:
        return next((p for p, threads in self.procs.items() if tid in threads), None)

    def runtime(self, tid: int) -> float | None:
        tgid = self.tgid(tid)
        return None if tgid is None else self.ran[tid]

    def tids(self) -> set[int]:
        return {tid for threads in self.procs.values() for tid in threads}


def budget(threads: FakeThreads, proc_pct: int = 90, tier_pct: int = 95) -> GpuBudget:
    return GpuBudget(proc_pct, tier_pct, ncpus=2, period_s=0.1, bank_s=0.5,
                     runtime=threads.runtime, tgid=threads.tgid, clock=lambda: threads.now)


def run(b: GpuBudget, threads: FakeThreads, seconds: float, step: float = 0.1) -> set[int]:
    within: set[int] = set()
    end = threads.now + seconds
    while threads.now < end:
        within = b.within(threads.tids())
        threads.advance(step)
    return within


def test_a_process_spinning_on_every_cpu_loses_its_renice():
    threads = FakeThreads({100: {101: 1.0, 102: 1.0}})
    b = budget(threads)
    assert run(b, threads, 1.0) == {101, 102}  # the bank: 0.5 s of debt
    # 2 CPUs against 1.8: 0.11 s of debt a second, over the bank after 4.5 s.
    assert run(b, threads, 5.0) == set()


def test_a_busy_launcher_keeps_it():
    threads = FakeThreads({200: {201: 1.0, 202: 0.7}})  # 85% of all CPUs
    assert run(budget(threads), threads, 60.0) == {201, 202}


def test_debt_is_at_most_a_period_past_the_bank():
    threads = FakeThreads({100: {101: 1.0, 102: 1.0}})
    b = budget(threads)
    run(b, threads, 60.0)
    threads.procs[100] = {101: 0.0, 102: 0.0}  # it stops spinning, still tagged
    assert run(b, threads, 0.1) == set()
    assert run(b, threads, 0.2) == {101, 102}


def test_many_processes_within_their_own_budget_are_held_by_the_tier():
    threads = FakeThreads({p: {p + 1: 1.0} for p in (100, 200)})  # 2 x 1 CPU: 50% each
    assert run(budget(threads), threads, 10.0) == set()
    threads = FakeThreads({p: {p + 1: 1.0} for p in (100, 200)})
    assert run(budget(threads, tier_pct=100), threads, 10.0) == {101, 201}
