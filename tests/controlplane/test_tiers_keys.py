from scx_gpu.controlplane import intf
from scx_gpu.controlplane.config import Config, TierMembers
from scx_gpu.controlplane.scheduler import comm_key, comm_prefix_lens
from scx_gpu.errors import UsageError


def test_exact_and_prefix_keys():
    exact = comm_key("python3")
    assert bytes(exact) == b"python3" + b"\0" * 9
    prefix = comm_key("stress*")
    assert isinstance(prefix, intf.CommPrefix)
    assert prefix.len == 6 and prefix.prefix == b"stress"


def test_prefix_lengths_mask():
    assert comm_prefix_lens(["make", "stress*", "cc*", "ld*"]) == (1 << 6) | (1 << 2)
    assert comm_prefix_lens(["make"]) == 0


def test_bad_patterns_are_rejected():
    for bad in ("", "*", "a*b*", "x" * 16, "sixteen-chars-xx*"):
        try:
            Config(batch=TierMembers(comms=[bad])).validate()
        except UsageError:
            continue
        raise AssertionError(f"{bad!r} accepted")
