"""``lora-studio hosts check``, and the launch flags ``train`` shares with it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import StudioError
from core.machine.launch import BACKENDS, HOSTS_FILE, Launch
from core.models.inspect import resolve_model
from core.params import add_arguments, params_from_args
from core.settings import Settings


def add_launch_arguments(parser: argparse.ArgumentParser, processes: bool = True) -> None:
    """Where the ranks run: ``--processes``/``--np`` here, or ``--hostfile``."""
    if processes:
        parser.add_argument(
            "--processes",
            "--np",
            type=int,
            default=1,
            metavar="N",
            help="train with N processes on this machine, through mlx.launch (default: 1)",
        )
    parser.add_argument(
        "--hostfile",
        nargs="?",
        const="",
        metavar="FILE",
        help="train over the hosts of an mlx.launch hosts file, one rank each (alone: the "
        f"studio's {HOSTS_FILE})",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="ring", help="mlx.launch backend (default: ring)"
    )


def launch_from_args(args: argparse.Namespace, settings: Settings) -> Launch:
    hostfile = args.hostfile
    if hostfile == "":
        hostfile = settings.home / HOSTS_FILE
    return Launch(
        processes=getattr(args, "processes", 1),
        hostfile=Path(hostfile) if hostfile is not None else None,
        backend=args.backend,
    )


def add_parser(commands) -> None:
    hosts = commands.add_parser("hosts", help="the hosts of distributed training")
    hosts_commands = hosts.add_subparsers(dest="hosts_command", required=True)
    check = hosts_commands.add_parser(
        "check", help="check every host over ssh before a run: reachable, versions, model"
    )
    add_launch_arguments(check, processes=False)
    check.add_argument("--model", help="the base model every host needs")
    check.add_argument(
        "--data", help="with --model and training flags: check each host's memory for the run"
    )
    add_arguments(check)


def hosts(args: argparse.Namespace) -> int:
    """Check each host; exit 1 if any has a problem, 2 if the hosts file itself is wrong."""
    from core.machine.hosts import check_hosts

    settings = Settings.from_env()
    if args.hostfile is None:
        args.hostfile = ""  # the studio's hosts file
    try:
        launch = launch_from_args(args, settings)
        found = launch.hosts()
        model = resolve_model(args.model, settings.models) if args.model else None
        rank_gb = _rank_plan_gb(args, settings, model, launch)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reports = check_hosts(found, model, rank_gb)
    for report in reports:
        print(report.line())
    try:
        launch.check_backend(found)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if all(report.ok for report in reports) else 1


def _rank_plan_gb(args: argparse.Namespace, settings: Settings, model, launch) -> float | None:
    """One rank's memory plan for the run ``--data`` and the training flags describe."""
    if not args.data:
        return None
    if model is None:
        raise StudioError("--data needs --model: the plan is the model's and the data's")
    from core.train.service import TrainingService

    service = TrainingService(settings)
    info, params, dataset = service.check(model, args.data, params_from_args(args), launch=launch)
    return service.plan(info, params, dataset, launch).estimate.peak_gb
