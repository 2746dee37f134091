"""The --quota auto controller on made-up histograms (the loop runs in the VM test)."""

from scx_gpu.controlplane.autoquota import MIN_GPU_RUNS, QuotaController
from scx_gpu.controlplane.intf import WAIT_BUCKETS
from scx_gpu.controlplane.stats import wait_percentile_ns, wait_quantile_ns


def hist(**buckets: int) -> list[int]:
    """A wait histogram: b<N>=count puts count waits in [2^N, 2^(N+1)) ns."""
    out = [0] * WAIT_BUCKETS
    for name, count in buckets.items():
        out[int(name[1:])] = count
    return out


def controller(quota: int) -> QuotaController:
    return QuotaController(target_us=50, low=5, high=80, step=5, quota=quota)


def test_quantile_interpolates_inside_the_bucket_the_percentile_bounds_it():
    assert wait_quantile_ns(hist(), 0.99) == 0 == wait_percentile_ns(hist(), 0.99)
    assert wait_percentile_ns(hist(b14=100), 0.99) == 32768
    assert wait_percentile_ns(hist(b10=99, b20=1), 0.99) == 2048
    assert wait_percentile_ns(hist(b10=98, b20=2), 0.99) == 2 << 20
    # 100 waits in [16384, 32768): the 99th sits 99% of the way up.
    assert abs(wait_quantile_ns(hist(b14=100), 0.99) - (16384 + 0.99 * 16384)) < 1
    assert wait_quantile_ns(hist(b10=99, b20=1), 0.99) <= 2048
    assert wait_quantile_ns(hist(b10=98, b20=2), 0.99) >= 1 << 20


def test_steps_up_while_within_target_or_idle_then_stops_at_the_ceiling():
    c = controller(70)
    within = c.decide(hist(b14=1000))  # p99 about 32 us
    assert within and (within.before, within.after) == (70, 75) and "within" in within.reason
    idle = c.decide(hist(b25=MIN_GPU_RUNS - 1))  # a few long waits: too few to judge
    assert idle and idle.after == 80 and "idle" in idle.reason
    assert c.decide(hist(b14=1000)) is None and c.quota == 80


def test_halves_at_once_on_a_miss_down_to_the_floor():
    c = controller(40)
    seen = []
    while (change := c.decide(hist(b14=900, b17=100))) is not None:  # p99 about 230 us
        assert "over the 50 us target" in change.reason
        seen.append(change.after)
    assert seen == [20, 10, 5] and c.quota == 5
    last = controller(10).decide(hist(b17=100))
    assert last is not None and "batch quota 10% -> 5%" in last.line()
