"""The scx_stats endpoint: the request parser (also fuzzed), a real socket, the monitor."""

import json
import socket
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scx_gpu.controlplane import stats_socket
from scx_gpu.controlplane.stats_socket import handle

TOTALS = {"tiers": {"gpu": {"cpu_pct": 12.5, "runs": 3, "wait_p99_us": 4.0}},
          "batch_quota_pct": 50, "batch_throttled_ms": 2.0, "floor_dispatches": 1,
          "detector_hits": 7, "detector_duty_pct": 10.0}


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, object]:
        self.calls += 1
        return TOTALS


def reply(line: bytes, stats: Counting | None = None) -> dict[str, object]:
    raw = handle(line, stats or Counting())
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    decoded: dict[str, object] = json.loads(raw)
    return decoded


def test_stats_and_stats_meta():
    assert reply(b'{"req": "stats", "args": {"target": "top"}}\n') == {
        "errno": 0, "args": {"resp": TOTALS}}
    assert reply(b'{"req": "stats"}') == {"errno": 0, "args": {"resp": TOTALS}}
    meta = reply(b'{"req": "stats_meta", "args": {}}')
    assert meta["errno"] == 0
    resp = meta["args"]["resp"]  # type: ignore[index]
    assert resp["scx_gpu"]["top"] == "true" and "tiers" in resp["scx_gpu"]["fields"]
    assert resp["tier"]["fields"]["runs"] == {"datum": "u64",
                                              "desc": "times a task of the tier ran"}


@pytest.mark.parametrize("line", [
    b"nope", b"[1, 2]", b'{"req": 5}', b'{"req": "reboot"}', b'{"req": "stats", "args": 3}',
    b'{"req": "stats", "args": {"target": "other"}}', b"\xff\xfe",
    b'{"req": "stats", "pad": "' + b"x" * 5000 + b'"}'])
def test_bad_requests_get_einval_and_read_nothing(line):
    counting = Counting()
    answer = reply(line, counting)
    assert answer["errno"] == 22 and isinstance(answer["args"]["resp"], str)  # type: ignore[index]
    assert counting.calls == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_get_one_json_reply(line):
    counting = Counting()
    answer = reply(line, counting)
    assert answer["errno"] in (0, 22)
    assert counting.calls <= 1


def test_socket_is_root_only_and_serves_the_monitor(tmp_path):
    path = tmp_path / "stats"
    server = stats_socket.StatsSocket(Counting(), path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            client.sendall(b'{"req": "stats"}\n{"req": "bogus"}\n')
            lines = client.makefile("rb")
            assert json.loads(lines.readline())["errno"] == 0
            assert json.loads(lines.readline())["errno"] == 22
        seen: list[str] = []

        class Enough(Exception):
            pass

        def emit(line: str) -> None:
            seen.append(line)
            if len(seen) == 2:
                raise Enough

        with pytest.raises(Enough):
            stats_socket.monitor(0.05, emit, path=path)
        assert seen[0] == ("gpu: cpu  12.5% runs      3 wait p99        4us | quota 50% "
                           "throttled 2ms floor 1 hits 7 duty 10%"), seen
    finally:
        server.close()
    assert not path.exists()
