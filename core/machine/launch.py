"""How a training run starts: one process, or several ranks through ``mlx.launch``.

Data-parallel training is MLX's own: ``mlx.launch`` starts one worker per rank (locally, or
over ssh on the hosts of a hosts file), connects them (ring over TCP, MPI, or JACCL over
Thunderbolt RDMA), and the training loop splits each batch over the ranks and all-reduces the
gradients. This module only says how to call it: the hosts file (mlx.launch's own JSON
format), the command line, the environment, and what a rank's death looks like in its log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import StudioError

HOSTS_FILE = "hosts.json"
Backend = Literal["ring", "mpi", "jaccl"]
BACKENDS: tuple[str, ...] = ("ring", "mpi", "jaccl")
LOCAL = "127.0.0.1"  # what mlx.launch runs without ssh
# mlx.launch's own line when a rank ends badly; it exits 0 whatever its ranks did
_RANK_ENDED = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")


class Host(BaseModel):
    """One entry of mlx.launch's hosts file."""

    model_config = ConfigDict(extra="allow")

    ssh: str = Field(min_length=1, description="what `ssh` connects to")
    ips: list[str] = Field(default_factory=list, description="addresses the ring backend uses")


def load_hosts(path: Path) -> list[Host]:
    """The hosts of an mlx.launch hosts file: a list of hosts, or ``{"hosts": [...]}``."""
    return read_hostfile(path)[0]


def read_hostfile(path: Path) -> tuple[list[Host], list[str]]:
    """An mlx.launch hosts file's hosts, and its ``envs`` (``mlx.distributed_config``
    writes some; a plain list has none)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["hosts"] if isinstance(data, dict) else data
        envs = [str(e) for e in data.get("envs", [])] if isinstance(data, dict) else []
        hosts = [Host.model_validate(entry) for entry in entries]
    except FileNotFoundError:
        raise StudioError(
            f"no hosts file at {path}",
            hint='write one in mlx.launch\'s format: [{"ssh": "mac-1", "ips": ["10.0.0.1"]}, ...]',
        ) from None
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise StudioError(
            f"the hosts file {path} is not in mlx.launch's format: {_first_line(exc)}",
            hint='a JSON list like [{"ssh": "mac-1", "ips": ["10.0.0.1"]}, ...]',
        ) from None
    if not hosts:
        raise StudioError(f"the hosts file {path} lists no host")
    return hosts, envs


def is_this_machine(name: str) -> bool:
    """Whether an ssh destination names this machine (no ssh needed to reach it)."""
    host = name.rpartition("@")[2]
    return host in {LOCAL, "localhost", "::1", socket.gethostname(), socket.getfqdn()}


class Launch(BaseModel):
    """Where a run's ranks run: ``processes`` on this machine, or one per host of a file."""

    model_config = ConfigDict(extra="forbid")

    processes: int = Field(1, ge=1, le=64, description="training processes on this machine")
    hostfile: Path | None = Field(None, description="mlx.launch hosts file (one rank per host)")
    backend: Backend = Field("ring", description="mlx.launch backend: ring, mpi or jaccl")

    @property
    def distributed(self) -> bool:
        return self.hostfile is not None or self.processes > 1

    def hosts(self) -> list[Host]:
        """The rank order: the hosts file's hosts, or this machine ``processes`` times; the
        first runs rank 0 (events, checkpoints, the adapter), so it must be this machine."""
        if self.hostfile is None:
            return [Host(ssh=LOCAL, ips=[LOCAL]) for _ in range(self.processes)]
        hosts = load_hosts(self.hostfile)
        first = hosts[0]
        if not is_this_machine(first.ssh) and not set(first.ips) & local_addresses():
            raise StudioError(
                f"the first host of {self.hostfile} ({first.ssh}) is not this machine",
                hint="list this machine first: rank 0 writes the checkpoints and the adapter "
                "where the studio can publish them",
            )
        return [first.model_copy(update={"ssh": LOCAL}), *hosts[1:]]

    def check(self, batch_size: int, validation_examples: int) -> list[Host]:
        """The hosts, once everything a launch needs is there; StudioError naming the field."""
        hosts = self.hosts()
        ranks = len(hosts)
        if batch_size % ranks:
            raise StudioError(
                f"batch_size = {batch_size}: {ranks} ranks share each batch, so it must be a "
                f"multiple of {ranks}",
                hint=f"choose a batch size of {ranks * max(1, batch_size // ranks)} or "
                f"{ranks * (batch_size // ranks + 1)}",
            )
        if validation_examples < ranks:
            raise StudioError(
                f"{validation_examples} validation examples cannot be shared by {ranks} ranks",
                hint="raise the validation split, or add rows to valid.jsonl",
            )
        self.check_backend(hosts)
        return hosts

    def check_backend(self, hosts: list[Host]) -> None:
        """What the backend needs of the hosts, and mlx.launch itself."""
        if self.backend == "ring":
            for rank, host in enumerate(hosts):
                if not host.ips:
                    raise StudioError(
                        f'host {host.ssh} (rank {rank}) has no "ips": the ring backend '
                        "connects to IP addresses",
                        hint='add "ips": ["<its address on the Thunderbolt or Ethernet link>"]',
                    )
        if shutil.which(str(launcher())) is None:
            raise StudioError("mlx.launch is not installed next to this Python")

    def command(self, hosts: list[Host], folder: Path, worker: list[str]) -> list[str]:
        """The mlx.launch command line running ``worker`` on every rank; the hosts file it
        reads is written into the run's ``folder``."""
        hostfile = folder / HOSTS_FILE
        entries = [host.model_dump() for host in hosts]
        content = {"backend": self.backend, "envs": self._envs(), "hosts": entries}
        hostfile.write_text(json.dumps(content, indent=2), encoding="utf-8")
        port = str(free_port())
        backend = ["--backend", self.backend, "--hostfile", str(hostfile)]
        return [str(launcher()), *backend, "--starting-port", port, "--", *worker]

    def _envs(self) -> list[str]:
        """The hosts file's ``envs``, passed on."""
        return read_hostfile(self.hostfile)[1] if self.hostfile else []

    def environment(self, env: dict[str, str], hosts: list[Host]) -> dict[str, str]:
        """The launcher's environment, which its local ranks inherit: the CPU's cores shared
        by the ranks on this machine (each BLAS would otherwise start a thread per core)."""
        local = sum(host.ssh == LOCAL for host in hosts)
        threads = str(max(1, (os.cpu_count() or 1) // local))
        names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        return env | {name: threads for name in names if name not in env}


def launcher() -> Path:
    """The ``mlx.launch`` script of this Python's environment."""
    beside = Path(sys.executable).with_name("mlx.launch")
    return beside if beside.exists() else Path(shutil.which("mlx.launch") or "mlx.launch")


def free_port() -> int:
    """A TCP port nothing listens on now: the ring's first port (it takes one per rank)."""
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        return probe.getsockname()[1]


def local_addresses() -> set[str]:
    """This machine's addresses, as far as name resolution knows them."""
    try:
        return {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)} | {LOCAL}
    except OSError:
        return {LOCAL}


def rank_failure(log_text: str, hosts: list[Host]) -> tuple[int, str] | None:
    """Which rank ended the run, from mlx.launch's lines in the run's log: the first rank that
    ended badly on its own (mlx.launch then ends the others with SIGTERM). Returns the rank
    and what to tell people, with that rank's last log lines."""
    ended = [(int(rank), code) for rank, code in _RANK_ENDED.findall(log_text)]
    if not ended:
        return None
    culprits = [(rank, code) for rank, code in ended if code not in ("", "-15", "0")]
    rank, code = (culprits or ended)[0]
    where = hosts[rank].ssh if rank < len(hosts) else "?"
    where = "this machine" if where == LOCAL else f"host {where}"
    lines = [line for line in log_text.splitlines() if line.startswith(f"[rank {rank}]")]
    said = "; its last output:\n" + "\n".join(lines[-5:]) if lines else ""
    return rank, f"rank {rank} ({where}) {_exit(code)}{said}"


def _exit(code: str) -> str:
    if code.startswith("-"):
        return f"was killed by {signal.Signals(-int(code)).name}"
    return f"exited with code {code}" if code else "was killed"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
