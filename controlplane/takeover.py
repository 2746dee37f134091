"""Taking over from scx_loader, the scx project's scheduler service (org.scx.Loader,
system bus): `scx-gpu load --takeover`.

sched_ext runs one scheduler at a time, and scx_loader starts only the
schedulers of its built-in list. So while scx_loader runs one, `scx-gpu
load` refuses with its name, or with --takeover stops it (StopScheduler) and
starts the same scheduler, mode and arguments again when scx-gpu exits.
The name is looked up with NameHasOwner first: a plain call would make the
bus start scx_loader by D-Bus activation.
"""

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

from jeepney import DBusAddress, DBusErrorResponse, Properties, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import unwrap_msg

from scx_gpu.errors import EnvironmentProblem

SERVICE = "org.scx.Loader"
LOADER = DBusAddress("/org/scx/Loader", bus_name=SERVICE, interface=SERVICE)
NO_SCHEDULER = "unknown"  # CurrentScheduler when scx_loader runs none
# StopScheduler returns once the scheduler process has exited.
CALL_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Running:
    """What scx_loader runs: enough to start it again as it was."""

    name: str
    mode: int
    args: tuple[str, ...]

    def __str__(self) -> str:
        how = f"args {' '.join(self.args)}" if self.args else f"mode {self.mode}"
        return f"{self.name} ({how})"


class ScxLoaderClient:
    def __init__(self, conn: DBusConnection) -> None:
        self.conn = conn

    @classmethod
    def connect(cls) -> "ScxLoaderClient | None":
        """A client, or None when there is no system bus or scx_loader is not on it."""
        try:
            conn = open_dbus_connection(bus="SYSTEM")
        except (OSError, RuntimeError):  # no bus socket, or an unsupported address
            return None
        client = cls(conn)
        try:
            (owned,) = client._send(message_bus.NameHasOwner(SERVICE), "NameHasOwner")
        except BaseException:
            conn.close()
            raise
        if not owned:
            conn.close()
            return None
        return client

    def _send(self, msg: Any, what: str) -> tuple[Any, ...]:
        try:
            reply = self.conn.send_and_get_reply(msg, timeout=CALL_TIMEOUT_S)
            body: tuple[Any, ...] = unwrap_msg(reply)
        except DBusErrorResponse as exc:
            raise EnvironmentProblem(f"scx_loader refused {what}: {exc.name}: "
                                     f"{' '.join(map(str, exc.data))}") from exc
        except TimeoutError as exc:
            raise EnvironmentProblem(f"scx_loader did not answer {what} within "
                                     f"{CALL_TIMEOUT_S:.0f} s") from exc
        return body

    def _call(self, method: str, signature: str | None = None, body: tuple[Any, ...] = ()) -> None:
        self._send(new_method_call(LOADER, method, signature, body), method)

    def running(self) -> Running | None:
        (props,) = self._send(Properties(LOADER).get_all(), "GetAll")
        values = {name: value for name, (_, value) in props.items()}
        name = values.get("CurrentScheduler", NO_SCHEDULER)
        if name == NO_SCHEDULER:
            return None
        # Older scx_loader versions have no CurrentSchedulerArgs.
        return Running(name, int(values.get("SchedulerMode", 0)),
                       tuple(values.get("CurrentSchedulerArgs", ())))

    def stop(self) -> None:
        self._call("StopScheduler")

    def start(self, running: Running) -> None:
        if running.args:
            self._call("StartSchedulerWithArgs", "sas", (running.name, list(running.args)))
        else:
            self._call("StartScheduler", "su", (running.name, running.mode))

    def close(self) -> None:
        self.conn.close()


def _refusal(running: Running) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"scx_loader (D-Bus {SERVICE}) runs {running.name}, and sched_ext runs one scheduler "
        "at a time: stop it (`scxctl stop`), or pass --takeover to stop it now and start it "
        "again when scx-gpu exits")


def _hand_back(running: Running, emit: Callable[[str], None]) -> None:
    """Start scx_loader's scheduler again; a failure is reported, not raised (the
    caller is leaving already), with what the operator can do."""
    client = ScxLoaderClient.connect()
    if client is None:
        emit(f"scx-gpu: scx_loader is gone; {running} was not started again")
        return
    try:
        with closing(client):
            client.start(running)
    except EnvironmentProblem as exc:
        emit(f"scx-gpu: could not hand back to scx_loader ({exc}); start it with "
             f"`scxctl start --sched {running.name}`")
        return
    emit(f"scx-gpu: handed back to scx_loader: started {running}")


@contextmanager
def taken_over(takeover: bool, emit: Callable[[str], None]) -> Iterator[Running | None]:
    """The body runs with scx_loader's scheduler stopped (yields what it ran),
    or with nothing to stop (yields None); refuses unless takeover."""
    client = ScxLoaderClient.connect()
    if client is None:
        yield None
        return
    with closing(client):
        running = client.running()
        if running is not None:
            if not takeover:
                raise _refusal(running)
            client.stop()
    if running is None:
        yield None
        return
    emit(f"scx-gpu: took over from scx_loader: stopped {running}")
    try:
        yield running
    finally:
        _hand_back(running, emit)
