"""Local server processes: free ports, start, readiness, stop, and reaping on exit.

What this adds over ``subprocess``: a port picker that never lands on the well-known ports or
the kernel's ephemeral range, a reaper that stops every server we started when the interpreter
exits or is told to terminate, and parent-death signals so a ``kill -9`` of the test run does
not leave orphans behind either.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, TypeVar

from shardcache.errors import BinaryNotFoundError, PortInUseError, ServerNotReadyError

__all__ = ["ServerProcess", "find_binary", "pick_port", "pid_is_server", "wait_until"]

T = TypeVar("T")

HOST = "127.0.0.1"

# Ports are drawn from below the Linux ephemeral range (32768-60999), so a port we pick is not
# taken a moment later by some outgoing connection, and so that port + 10000 (a cluster node's
# bus port) stays below it too. 6379, 11211 and 26379 are far outside this range.
PORT_RANGE = (16000, 22700)
CLUSTER_BUS_OFFSET = 10000

_INSTALL_HINTS = {
    "redis-server": "apt-get install -y redis-server",
    "redis-cli": "apt-get install -y redis-tools",
    "redis-sentinel": "apt-get install -y redis-sentinel",
    "memcached": "apt-get install -y memcached",
    "openssl": "apt-get install -y openssl",
}


def find_binary(name: str) -> str:
    """Return the path of a server program, or raise a `BinaryNotFoundError` naming the fix."""
    path = shutil.which(name)
    if path is None:
        hint = _INSTALL_HINTS.get(name, f"install {name}")
        raise BinaryNotFoundError(f"{name} not found on PATH: {hint} (or run ./dev setup)")
    return path


class _PortPicker:
    """Hands out free loopback ports, never the same one twice in this process.

    Ports are a machine-wide resource, so one picker per process is the right scope.
    """

    def __init__(self) -> None:
        self._given: set[int] = set()
        self._lock = threading.Lock()
        self._random = random.SystemRandom()

    def pick(self, *, with_bus: bool = False) -> int:
        low, high = PORT_RANGE
        with self._lock:
            for _ in range(500):
                port = self._random.randrange(low, high)
                wanted = [port, port + CLUSTER_BUS_OFFSET] if with_bus else [port]
                if port in self._given or not all(_is_free(p) for p in wanted):
                    continue
                self._given.add(port)
                return port
        raise PortInUseError(f"no free port found in {low}-{high} on {HOST}")


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


_PICKER = _PortPicker()


def pick_port(*, with_bus: bool = False) -> int:
    """A free port on 127.0.0.1 (and ``port + 10000`` too when ``with_bus``)."""
    return _PICKER.pick(with_bus=with_bus)


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    errors: tuple[type[BaseException], ...] = (OSError,),
) -> T:
    """Poll ``condition`` until it returns something truthy; return that value.

    Exceptions listed in ``errors`` count as "not yet". Past ``timeout`` seconds a
    `ServerNotReadyError` names ``what`` was awaited and the last error seen.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
        except errors as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise ServerNotReadyError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


class _Reaper:
    """Stops every attached server when this interpreter exits or receives SIGTERM/SIGHUP.

    atexit covers a normal exit and Ctrl-C; the signal handlers cover ``kill``; the
    parent-death signal set in each child (see `_die_with_parent`) covers ``kill -9``.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._live: set[ServerProcess] = set()
        self._lock = threading.Lock()
        self._installed = False
        self._previous: dict[int, Any] = {}

    def track(self, proc: ServerProcess) -> None:
        with self._lock:
            self._live.add(proc)
            if not self._installed:
                self._install()

    def forget(self, proc: ServerProcess) -> None:
        with self._lock:
            self._live.discard(proc)

    def reap_all(self) -> None:
        with self._lock:
            live, self._live = list(self._live), set()
        for proc in live:
            proc.stop(timeout=3)

    def _install(self) -> None:
        self._installed = True
        atexit.register(self.reap_all)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.reap_all()
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


_REAPER = _Reaper()

_PR_SET_PDEATHSIG = 1
_LIBC: Any = None
with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it when our thread dies.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess:
    """One server process on 127.0.0.1: its port, directory, log, and lifetime.

    Subclasses say which program to run (`binary`), how (`command`, `write_config`) and how
    to tell it is serving (`ping`). A process is either started here (a child we own) or
    attached from a saved state by pid (``python -m shardcache.testing down`` does that).
    """

    binary: ClassVar[str]
    role: str = "server"

    def __init__(self, port: int, workdir: Path, *, label: str = "") -> None:
        self.port = port
        self.workdir = Path(workdir)
        self.label = label or f"{self.binary}:{port}"
        self._popen: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} pid={self.pid} running={self.running}>"

    @property
    def host(self) -> str:
        return HOST

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``."""
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else self._pid

    # --- what subclasses define -------------------------------------------------------

    def command(self, binary: str) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must say how to run {self.binary}")

    def write_config(self) -> None:
        """Write any config file the command reads (kept across restarts)."""

    def popen_options(self) -> dict[str, Any]:
        """More ``subprocess.Popen`` options for the server (e.g. the user to run as)."""
        return {}

    def ping(self) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must say how to probe {self.binary}")

    # --- lifetime ------------------------------------------------------------------------

    def launch(self, *, detach: bool = False) -> None:
        """Start the process without waiting for it to serve.

        ``detach=True`` starts it in a session of its own that outlives this interpreter (for
        the CLI's ``up``); otherwise it is reaped when this interpreter exits.
        """
        if self.running:
            return
        binary = find_binary(self.binary)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.workdir / ".configured").exists():
            self.write_config()
            (self.workdir / ".configured").touch()
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.command(binary),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # The parent-death signal fires when the *thread* that forked exits, so it is
                # only safe from the main thread, and never wanted for detached servers.
                preexec_fn=None if detach or not in_main_thread else _die_with_parent,
                **self.popen_options(),
            )
        self._pid = self._popen.pid
        if detach:
            _REAPER.forget(self)
        else:
            _REAPER.track(self)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until `ping` succeeds; raise if the process dies or the deadline passes."""

        def serving() -> bool:
            if not self.running:
                self._raise_exited()
            return self.ping()

        wait_until(serving, timeout=timeout, what=f"{self.label} to answer")

    def _raise_exited(self) -> None:
        log = self.read_log()
        if "Address already in use" in log or "failed to listen" in log:
            raise PortInUseError(f"{self.label}: port {self.port} is already in use")
        raise ServerNotReadyError(f"{self.label} exited during start-up; its log ends:\n{log}")

    def read_log(self, last: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-last:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self._pid is not None and pid_is_server(self._pid, self.binary, self.port)

    def detach(self) -> None:
        """Leave the process running past this interpreter (used after ``up`` succeeds)."""
        _REAPER.forget(self)

    def attach(self, pid: int) -> None:
        """Adopt a process started by another interpreter, known by its pid."""
        self._popen = None
        self._pid = pid

    def kill(self) -> None:
        """SIGKILL the process, as a crash would, and wait until it is gone."""
        self._signal_and_wait(signal.SIGKILL, timeout=10)

    def pause(self) -> None:
        """SIGSTOP the process: it keeps its sockets and answers nothing (a hung server).
        Returns once every thread of it has stopped: ``kill`` only queues the signal, and a
        server thread could still answer a request sent right after it."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: _stopped(pid), timeout=10, what=f"{self.label} to stop", interval=0.001)

    @contextlib.contextmanager
    def stalled(self, most: int = 10_000) -> Iterator[None]:
        """Paused, and with its accept queue full, for the ``with`` block: the kernel then
        drops a new connection's SYN, as for a host that fell off the network, so only a
        connect timeout ends a client's wait. (A merely paused server still completes the
        TCP handshake, since the kernel accepts into the queue on its behalf.)"""
        self.pause()
        held: list[socket.socket] = []
        try:
            # Full once three handshakes in a row do not complete: a single one can be late
            # for another reason (its port still lingering from an earlier connection).
            dropped = 0
            for _ in range(most):
                sock = socket.socket()
                held.append(sock)
                sock.setblocking(False)
                sock.connect_ex((HOST, self.port))
                poller = select.poll()  # not select(): the descriptors pass 1024
                poller.register(sock, select.POLLOUT)
                dropped = 0 if poller.poll(200) else dropped + 1
                if dropped == 3:
                    break
            else:
                raise RuntimeError(f"{self.label}: the accept queue never filled")
            yield
        finally:
            for sock in held:
                sock.close()
            self.resume()

    def resume(self) -> None:
        """SIGCONT a paused process."""
        if self.pid is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent."""
        self.resume()  # a paused process would not act on SIGTERM
        if not self._signal_and_wait(signal.SIGTERM, timeout=timeout):
            self._signal_and_wait(signal.SIGKILL, timeout=10)
        _REAPER.forget(self)

    def restart(self, timeout: float = 20.0) -> None:
        """Start a stopped process again on the same port and directory."""
        if not self.running:
            self.launch(detach=self._popen is None and self._pid is not None)
        self.wait_ready(timeout)

    def _signal_and_wait(self, sig: int, timeout: float) -> bool:
        pid = self.pid
        if pid is None or not self.running:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if self._popen is not None:
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True


def pid_is_server(pid: int, binary: str, port: int | None = None) -> bool:
    """Whether ``pid`` is alive (not a zombie) and runs ``binary`` (on ``port``, when given).

    A pid read back from a state file may have been reused by an unrelated process, so the
    command line is checked too.
    """
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if _state(stat) in ("Z", "X") or binary not in cmdline:
        return False
    return port is None or f":{port}" in cmdline or f" {port} " in f"{cmdline} "


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (state T), or the process is gone."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in threads:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # a thread that just ended
        if _state(stat) not in ("T", "t", "Z", "X"):
            return False
    return True


def _state(stat: str) -> str:
    """The state letter of a ``/proc/.../stat`` line: it follows the command name, which is
    in parentheses and may hold spaces."""
    return stat.rsplit(")", 1)[-1].split()[0]
