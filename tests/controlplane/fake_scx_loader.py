"""A stand-in for scx_loader on a private D-Bus bus, for the takeover tests.

It serves the org.scx.Loader interface (the properties and the Start, Switch
and Stop methods) and logs every call as a JSON line. Its "scheduler" is an
optional command, started by the Start methods and stopped (SIGTERM) by
StopScheduler, so in the sched_ext VM a real scheduler comes and goes.

    python3 -m tests.controlplane.fake_scx_loader ADDRESS LOG [--current NAME]
        [--mode N] [--arg A ...] [-- COMMAND...]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jeepney import HeaderFields, MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

from scx_gpu.controlplane.takeover import NO_SCHEDULER, SERVICE

REPO = Path(__file__).resolve().parents[2]
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{services}</servicedir>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class FakeLoader:
    def __init__(self, log: Path, current: str, mode: int, args: list[str],
                 command: list[str]) -> None:
        self.log, self.command = log, command
        self.current, self.mode, self.args = current, mode, args
        self.child: subprocess.Popen[bytes] | None = None
        if current != NO_SCHEDULER:
            self._start_child()

    def _start_child(self) -> None:
        if self.command:
            # The stand-in scheduler must not see this bus (it would find itself).
            env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent"}
            self.child = subprocess.Popen(self.command, env=env)

    def stop_child(self) -> None:
        if self.child is not None:
            self.child.send_signal(signal.SIGTERM)
            self.child.wait(timeout=60)
            self.child = None

    def properties(self) -> dict[str, tuple[str, Any]]:
        return {"CurrentScheduler": ("s", self.current), "SchedulerMode": ("u", self.mode),
                "CurrentSchedulerArgs": ("as", self.args),
                "SupportedSchedulers": ("as", ["scx_bpfland", "scx_lavd", "scx_rusty"])}

    def call(self, member: str, body: tuple[Any, ...]) -> tuple[str | None, tuple[Any, ...]]:
        """(reply signature, reply body) of a method call."""
        with self.log.open("a") as out:
            out.write(json.dumps({"call": member, "body": list(body)}) + "\n")
        if member == "GetAll":
            return "a{sv}", (self.properties(),)
        if member == "Get":
            return "v", (self.properties()[body[1]],)
        if member in ("StopScheduler", "StartScheduler", "StartSchedulerWithArgs",
                      "SwitchScheduler", "SwitchSchedulerWithArgs"):
            self.stop_child()
            self.current, self.mode, self.args = NO_SCHEDULER, 0, []
        if member in ("StartScheduler", "SwitchScheduler"):
            self.current, self.mode = body[0], body[1]
        elif member in ("StartSchedulerWithArgs", "SwitchSchedulerWithArgs"):
            self.current, self.args = body[0], list(body[1])
        if self.current != NO_SCHEDULER:
            self._start_child()
        return None, ()

    def serve(self, address: str) -> None:
        conn = open_dbus_connection(bus=address)
        conn.send_and_get_reply(message_bus.RequestName(SERVICE))
        while True:
            msg = conn.receive()
            if msg.header.message_type != MessageType.method_call:
                continue
            member = msg.header.fields.get(HeaderFields.member, "")
            try:
                signature, body = self.call(member, msg.body)
            except (KeyError, IndexError):
                conn.send(new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs"))
                continue
            conn.send(new_method_return(msg, signature, body))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("log", type=Path)
    parser.add_argument("--current", default=NO_SCHEDULER)
    parser.add_argument("--mode", type=int, default=0)
    parser.add_argument("--arg", action="append", default=[])
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:split])
    fake = FakeLoader(opts.log, opts.current, opts.mode, opts.arg, argv[split + 1:])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        fake.serve(opts.address)
    finally:
        fake.stop_child()


@contextmanager
def private_bus(activation_marker: Path | None = None) -> Iterator[str]:
    """A dbus-daemon of its own; yields its address. With activation_marker,
    the bus would start org.scx.Loader on demand by creating that file."""
    with tempfile.TemporaryDirectory(prefix="scx-gpu-dbus-") as tmp:
        socket, services = Path(tmp) / "bus", Path(tmp) / "services"
        services.mkdir()
        if activation_marker:
            (services / f"{SERVICE}.service").write_text(
                f"[D-BUS Service]\nName={SERVICE}\nExec=/usr/bin/touch {activation_marker}\n")
        config = Path(tmp) / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket=socket, services=services))
        daemon = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork"])
        try:
            deadline = time.monotonic() + 10
            while not socket.exists():
                assert daemon.poll() is None and time.monotonic() < deadline, "no dbus-daemon"
                time.sleep(0.02)
            yield f"unix:path={socket}"
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)


@contextmanager
def fake_loader(address: str, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """The fake service on address until the body ends (args: main()'s options)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.controlplane.fake_scx_loader",
                             address, str(log), *args], cwd=REPO)
    try:
        with open_dbus_connection(bus=address) as conn:
            deadline = time.monotonic() + 30
            while not conn.send_and_get_reply(message_bus.NameHasOwner(SERVICE)).body[0]:
                assert proc.poll() is None and time.monotonic() < deadline, "no fake scx_loader"
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def calls(log: Path) -> list[str]:
    """The method names called so far, in order (property reads left out)."""
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return [e["call"] for e in entries if e["call"] not in ("Get", "GetAll")]


def last_call(log: Path) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(log.read_text().splitlines()[-1])
    return entry


if __name__ == "__main__":
    main()
