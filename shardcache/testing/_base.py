"""What every local topology shares: a directory, a list of processes, start/stop/heal."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from shardcache.errors import PortInUseError
from shardcache.testing._process import ServerProcess

__all__ = ["HealthRow", "StartStop", "Topology"]

StartStopT = TypeVar("StartStopT", bound="StartStop")
TopologyT = TypeVar("TopologyT", bound="Topology")

PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class HealthRow:
    """One line of a health table: a server, its current role, and whether it serves."""

    topology: str
    label: str
    address: str
    role: str
    ok: bool
    detail: str = ""


class StartStop:
    """``with x:`` starts ``x`` and always stops it."""

    def start(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say how to start")

    def stop(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say how to stop")

    def __enter__(self: StartStopT) -> StartStopT:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Topology(StartStop):
    """A group of local servers started, checked and stopped together.

    Subclasses build their processes (`_build`), say when the whole group is ready
    (`_wait_ready`), and how to empty it between tests (`flush`). The group lives in one
    temporary directory that `stop` removes. Use it as a context manager::

        with StandaloneRedis(3) as pool:
            print(pool.urls)
    """

    kind: ClassVar[str]

    def __init__(self, *, detach: bool = False, startup_timeout: float = 60.0) -> None:
        self.detach = detach
        self.startup_timeout = startup_timeout
        self.root: Path | None = None
        self.processes: list[ServerProcess] = []
        self.startup_seconds: float | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    # --- what subclasses define -------------------------------------------------------

    def _build(self, root: Path, ports: Sequence[int] | None) -> list[ServerProcess]:
        """Make (not start) the processes; ``ports`` is given when restoring a saved state."""
        raise NotImplementedError(f"{type(self).__name__} must build its processes")

    def _wait_ready(self, timeout: float) -> None:
        """Block until the whole topology serves as designed."""
        for proc in self.processes:
            proc.wait_ready(timeout)

    def flush(self) -> None:
        """Delete every key on every server, so the next test starts empty."""
        raise NotImplementedError(f"{type(self).__name__} must say how to flush")

    def health(self) -> list[HealthRow]:
        """One row per server, read live from the servers."""
        raise NotImplementedError(f"{type(self).__name__} must report its health")

    def describe(self) -> dict[str, Any]:
        """Addresses and URLs, as JSON-able data."""
        raise NotImplementedError(f"{type(self).__name__} must describe itself")

    def options(self) -> dict[str, Any]:
        """The constructor arguments, so a saved state can be restored."""
        return {}

    # --- lifetime ------------------------------------------------------------------------

    def launch(self) -> None:
        """Start every process without waiting for any of them."""
        self.root = Path(tempfile.mkdtemp(prefix=f"shardcache-{self.kind}-"))
        self.processes = self._build(self.root, None)
        for proc in self._first_wave():
            proc.launch(detach=self.detach)

    def _first_wave(self) -> list[ServerProcess]:
        """The processes `launch` starts; `_wait_ready` starts any others when it is time."""
        return self.processes

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the topology is ready (all servers up, replication and roles settled)."""
        self._wait_ready(self.startup_timeout if timeout is None else timeout)

    def start(self) -> None:
        """Launch and wait until ready; a port taken meanwhile is retried on fresh ports."""
        began = time.monotonic()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self.launch()
                self.wait_ready()
            except PortInUseError:
                self.stop()
                if attempt == PORT_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()
                raise
            else:
                break
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the directory. Idempotent."""
        if self.processes:
            with ThreadPoolExecutor(max_workers=len(self.processes)) as pool:
                list(pool.map(lambda proc: proc.stop(), self.processes))
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def heal(self, timeout: float | None = None) -> None:
        """Restart any process that was killed or stopped, and wait until ready again."""
        for proc in self.processes:
            if not proc.running:
                proc.launch(detach=self.detach)
        self.wait_ready(timeout)

    def kill(self, node: ServerProcess) -> None:
        """SIGKILL one server, as a crash would."""
        self._own(node).kill()

    def restart(self, node: ServerProcess, timeout: float = 30.0) -> None:
        """Start a killed server again on its port and directory, and wait until it answers."""
        self._own(node).restart(timeout)

    def _own(self, node: ServerProcess) -> ServerProcess:
        if node not in self.processes:
            raise ValueError(f"{node!r} is not a server of this {self.kind} topology")
        return node

    @property
    def running(self) -> bool:
        return bool(self.processes) and all(proc.running for proc in self.processes)

    def __iter__(self) -> Iterator[ServerProcess]:
        return iter(self.processes)

    # --- saved state (the CLI's up/status/down) -------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "options": self.options(),
            "root": str(self.root),
            "ports": [proc.port for proc in self.processes],
            "pids": [proc.pid for proc in self.processes],
            **self.describe(),
        }

    @classmethod
    def from_state(cls: type[TopologyT], state: dict[str, Any]) -> TopologyT:
        """Re-attach to servers another interpreter started and left running."""
        topology = cls(detach=True, **state["options"])
        topology.root = Path(state["root"])
        topology.processes = topology._build(topology.root, state["ports"])
        for proc, pid in zip(topology.processes, state["pids"], strict=True):
            proc.attach(pid)
        return topology
