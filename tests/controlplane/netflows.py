"""Traffic for the network isolation tests: `python -m tests.controlplane.netflows MODE ...`.

echo PORT                serve 1 KB request/response exchanges
sink PORT START END      receive until END, then print the rate from START to END
bulk HOST PORT END       send as fast as the path takes it, until END
rr HOST PORT START END   1 KB requests every RR_INTERVAL_S until END, then print the
                         percentiles of the round trips begun from START

START and END are CLOCK_MONOTONIC seconds (window()), one clock for every
process on the host, whatever its namespaces: flows started one after the
other measure the same seconds.
"""

import json
import socket
import sys
import threading
import time

MSG = 1024
CHUNK = 1 << 16
RR_INTERVAL_S = 0.003


def window(seconds: float, lead_s: float) -> tuple[str, str]:
    """START and END arguments: seconds from lead_s from now (for the flows to start and
    a bulk transfer to leave slow start)."""
    start = time.monotonic() + lead_s
    return f"{start:.6f}", f"{start + seconds:.6f}"


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = conn.recv(n - len(data))
        if not got:
            raise ConnectionError("peer closed")
        data += got
    return data


def _listen(port: int) -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen()
    return srv


def echo(port: int) -> None:
    srv = _listen(port)
    print("ready", flush=True)

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                conn.sendall(_recv_exact(conn, MSG))
        except ConnectionError:
            conn.close()
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def sink(port: int, start: float, end: float) -> None:
    srv = _listen(port)
    print("ready", flush=True)
    conn, _ = srv.accept()
    counted = 0
    conn.settimeout(0.5)
    while (now := time.monotonic()) < end:
        try:
            got = len(conn.recv(CHUNK))
        except TimeoutError:
            continue
        if not got:
            break
        if now >= start:
            counted += got
    print(json.dumps({"bps": counted * 8 / (end - start)}), flush=True)


def bulk(host: str, port: int, end: float) -> None:
    conn = socket.create_connection((host, port))
    data = b"x" * CHUNK
    conn.settimeout(0.5)
    while time.monotonic() < end:
        try:
            conn.send(data)
        except TimeoutError:
            continue
        except OSError:
            break


def rr(host: str, port: int, start: float, end: float) -> None:
    conn = socket.create_connection((host, port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"r" * MSG
    rtts: list[float] = []
    while (t0 := time.monotonic()) < end:
        conn.sendall(msg)
        _recv_exact(conn, MSG)
        if t0 >= start:
            rtts.append(time.monotonic() - t0)
        time.sleep(max(0.0, RR_INTERVAL_S - (time.monotonic() - t0)))
    rtts.sort()
    print(json.dumps({"n": len(rtts), "p50_ms": rtts[len(rtts) // 2] * 1e3,
                      "p99_ms": rtts[int(len(rtts) * 0.99)] * 1e3}), flush=True)


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "echo":
        echo(int(args[0]))
    elif mode == "sink":
        sink(int(args[0]), float(args[1]), float(args[2]))
    elif mode == "bulk":
        bulk(args[0], int(args[1]), float(args[2]))
    elif mode == "rr":
        rr(args[0], int(args[1]), float(args[2]), float(args[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
