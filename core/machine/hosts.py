"""Checking the hosts of a distributed run before it starts, and giving them its files.

Each host is asked, over non-interactive ssh, to run this module with ``--probe``: it answers
with the versions it runs, whether the base model is where this machine has it, and its free
memory. A host that cannot answer, or answers differently, gets a problem that names it and
says how to fix it. (This machine is probed the same way, without ssh.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from core.errors import StudioError
from core.machine.launch import LOCAL, Host

PACKAGES = ("mlx", "mlx-lm", "mlx-lora-studio")
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
PROBE_SECONDS = 30


@dataclass
class HostReport:
    """What one host said, and what is wrong with it (nothing when ``ok``)."""

    rank: int
    host: str
    problems: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    available_gb: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        where = "this machine" if self.host == LOCAL else self.host
        if self.ok:
            memory = f", {self.available_gb:.1f} GB free" if self.available_gb else ""
            return f"rank {self.rank} ({where}): ok{memory}"
        return f"rank {self.rank} ({where}): " + "; ".join(self.problems)


def probe(model: str | None) -> dict:
    """What ``--probe`` prints: this machine's side of the check."""
    from core.machine.memory import available_memory_gb

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return {
        "python": sys.executable,
        "versions": versions,
        "model": bool(model) and (Path(model) / "config.json").is_file(),
        "available_gb": available_memory_gb(),
    }


def check_hosts(
    hosts: list[Host], model: str | Path | None = None, rank_gb: float | None = None
) -> list[HostReport]:
    """Probe every host; the reports, in rank order. ``rank_gb`` is a run's memory plan for
    one rank: a host with less free memory than its ranks need has a problem."""
    here = probe(str(model) if model else None)
    reports = [_check(rank, host, here, model) for rank, host in enumerate(hosts)]
    if rank_gb:
        ranks_on = Counter(host.ssh for host in hosts)
        for report in reports:
            _check_memory(report, rank_gb * ranks_on[report.host], ranks_on[report.host])
    return reports


def _check_memory(report: HostReport, needed_gb: float, ranks: int) -> None:
    free = report.available_gb
    if report.ok and free is not None and needed_gb > free:
        report.problems.append(
            f"the run needs about {needed_gb:.2f} GB for its {ranks} rank(s) there and "
            f"{free:.2f} GB is free; fix: free memory there, or lower the run's memory "
            "(`lora-studio plan` lists how)"
        )


def _check(rank: int, host: Host, here: dict, model: str | Path | None) -> HostReport:
    report = HostReport(rank=rank, host=host.ssh)
    command = [sys.executable, "-m", "core.machine.hosts", "--probe", str(model or "")]
    try:
        done = _run_on(host.ssh, command, timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        report.problems.append(
            f"no answer in {PROBE_SECONDS} s; fix: check that `ssh {host.ssh} true` returns"
        )
        return report
    if done.returncode == 255:
        said = _last_line(done.stderr) or "ssh failed"
        report.problems.append(
            f"not reachable over ssh ({said}); fix: check the address, and that "
            f"`ssh -o BatchMode=yes {host.ssh} true` works without a password "
            f"(`ssh-copy-id {host.ssh}`)"
        )
        return report
    try:
        there = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report.problems.append(
            f"LoRA Studio does not run at {sys.executable} there "
            f"({_last_line(done.stderr) or f'exit code {done.returncode}'}); fix: install "
            "it in a virtual environment at the same path as on this machine"
        )
        return report
    report.versions, report.available_gb = there["versions"], there["available_gb"]
    for name in PACKAGES:
        if report.versions.get(name) != here["versions"][name]:
            report.problems.append(
                f"{name} {report.versions.get(name)} there, {here['versions'][name]} here; fix: "
                f"`pip install {name}=={here['versions'][name]}` in its environment"
            )
    if model and not there["model"]:
        report.problems.append(
            f"the base model is not at {model}; fix: copy it to the same path "
            f"(`rsync -a {model}/ {host.ssh}:{model}/`) or share the folder"
        )
    return report


def copy_to_hosts(hosts: list[Host], paths: list[Path]) -> None:
    """Give the hosts a run's files (its dataset, the checkpoint it resumes from) at the same
    paths, over scp, by content: a host whose copy differs (an older checkpoint of a run
    resumed twice) gets this one in its place; a host that already has the same content (a
    shared file system, an earlier copy) is left alone."""
    for host in hosts:
        if host.ssh == LOCAL:
            continue
        for path in paths:
            there = _run_on(
                host.ssh, [sys.executable, "-m", "core.machine.hosts", "--digest", str(path)]
            )
            if there.returncode == 0 and there.stdout.strip() == digest(path):
                continue
            _replace_on(host.ssh, path)


def _replace_on(host: str, path: Path) -> None:
    """scp ``path`` beside its place on ``host``, then put it in place in one rename."""
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    made = _run_on(host, ["mkdir", "-p", str(path.parent)])
    copied = made.returncode == 0 and subprocess.run(
        ["scp", *SSH_OPTIONS, "-q", "-r", str(path), f"{host}:{shlex.quote(partial)}"],
        capture_output=True,
        text=True,
    )
    moved = (
        bool(copied)
        and copied.returncode == 0
        and _run_on(host, ["sh", "-c", 'rm -rf "$1" && mv "$2" "$1"', "sh", str(path), partial])
    )
    if not moved or moved.returncode != 0:
        said = _last_line((moved or copied or made).stderr)
        raise StudioError(
            f"could not copy {path} to {host}: {said}",
            hint="run `lora-studio hosts check`, or share the studio's runs folder",
        )


def digest(path: Path) -> str:
    """What a file or a folder holds, as one sha256 (names and contents), or "missing"."""
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    total = hashlib.sha256()
    for file in files:
        total.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with file.open("rb") as f:
            total.update(hashlib.file_digest(f, "sha256").digest())
    return total.hexdigest()


def _run_on(host: str, command: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    if host != LOCAL:
        command = ["ssh", *SSH_OPTIONS, host, shlex.join(command)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="this host's side of `lora-studio hosts check`")
    asked = parser.add_mutually_exclusive_group(required=True)
    asked.add_argument("--probe", metavar="MODEL")
    asked.add_argument("--digest", metavar="PATH", help="what a run's file holds here")
    args = parser.parse_args()
    if args.digest:
        print(digest(Path(args.digest)))
    else:
        print(json.dumps(probe(args.probe or None)))
