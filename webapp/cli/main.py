"""The ``lora-studio`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from core.access import is_loopback_host
from core.settings import Settings
from webapp.cli import (
    adapters_command,
    data_command,
    doctor_command,
    eval_command,
    hosts_command,
    models_command,
    sweep_command,
    train_command,
)
from webapp.cli.train_command import EXIT_REFUSED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-studio",
        description="Train LoRA adapters with MLX on local models. "
        "The studio's folders live in $LORA_STUDIO_HOME (default: the user data dir).",
    )
    parser.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--lan",
        action="store_true",
        help="serve on the local network (binds 0.0.0.0); needs --auth or --no-auth",
    )
    parser.add_argument(
        "--auth",
        default=os.environ.get("LORA_STUDIO_AUTH"),
        help="user:password for the page (default: $LORA_STUDIO_AUTH)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="allow a non-loopback --host, --lan or --share without credentials (not advised)",
    )
    parser.add_argument("--share", action="store_true", help="try a public Gradio share link")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LORA_STUDIO_API_KEY"),
        help="bearer key for /v1 (default: $LORA_STUDIO_API_KEY; with --lan: the password)",
    )
    commands = parser.add_subparsers(dest="command")
    train_command.add_parsers(commands)
    serve = commands.add_parser("serve", help="serve the OpenAI-compatible API (no page)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key",
        default=os.environ.get("LORA_STUDIO_API_KEY"),
        help="require this bearer key (default: $LORA_STUDIO_API_KEY; none: no key)",
    )
    serve.add_argument(
        "--no-auth", action="store_true", help="allow a non-loopback --host without --api-key"
    )
    adapters_command.add_parser(commands)
    adapters_command.add_transfer_parsers(commands)
    hosts_command.add_parser(commands)
    models_command.add_parser(commands)
    data_command.add_parser(commands)
    doctor_command.add_parser(commands)
    eval_command.add_parsers(commands)
    sweep_command.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers (loaded with mlx-lm) warns that PyTorch is absent: it is not needed here
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    if not _mlx_has_a_backend():
        return EXIT_REFUSED
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    commands = {
        "train": train_command.train,
        "plan": train_command.plan,
        "runs": train_command.runs,
        "adapters": adapters_command.adapters,
        "export": adapters_command.export,
        "import": adapters_command.import_,
        "hosts": hosts_command.hosts,
        "serve": serve,
        "models": models_command.models,
        "data": data_command.data,
        "doctor": doctor_command.doctor,
        "eval": eval_command.evaluate,
        "evals": eval_command.evals,
        "sweep": sweep_command.sweep,
        "sweeps": sweep_command.sweeps,
    }
    return commands.get(args.command, launch)(args)


def _mlx_has_a_backend() -> bool:
    """On Linux MLX's libraries come with a backend extra; without one, say which to pick."""
    try:
        import mlx.core  # noqa: F401
    except ImportError as exc:
        print(
            f"error: MLX cannot load ({exc}); on Linux install a backend with LoRA Studio: "
            "`pip install -e '.[cpu]'`, or `.[cuda]` on an NVIDIA GPU",
            file=sys.stderr,
        )
        return False
    return True


def launch(args: argparse.Namespace) -> int:
    """Start the page (and the API on the same port).

    Any door beyond this machine (a bind address other than loopback, or --share) needs
    credentials: the page a password, the API a key (the password, or --api-key)."""
    auth = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            print("error: --auth must be user:password", file=sys.stderr)
            return EXIT_REFUSED
        auth = (user, password)
    host = args.host or ("0.0.0.0" if args.lan else "127.0.0.1")
    exposed = args.share or not is_loopback_host(host)
    if exposed and auth is None and not args.no_auth:
        door = "--share opens a public link" if args.share else f"binding {host} serves the studio"
        print(
            f"error: {door} beyond this machine; give --auth user:password "
            "(or LORA_STUDIO_AUTH), or --no-auth if you really mean it",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    from core.machine.blas_choice import reexec_with_fast_blas

    reexec_with_fast_blas(["-m", "webapp", *sys.argv[1:]])
    from webapp.page.app import create_server
    from webapp.page.studio import Studio

    api_key = args.api_key or (auth[1] if auth and exposed else None)
    settings = Settings.from_env()
    notice = share_notice(args.port) if args.share else ""
    studio = Studio.open(settings, exposed=exposed)
    app = create_server(studio, auth=auth, api_key=api_key, notice=notice)
    print(f"studio: {settings.home}")
    print(f"LoRA Studio on http://127.0.0.1:{args.port} (API: http://127.0.0.1:{args.port}/v1)")
    if host == "0.0.0.0":
        print(f"on your network: http://{lan_address()}:{args.port}")
    if exposed:
        roots = ", ".join(str(r) for r in settings.dataset_roots())
        print(f"datasets by path: only under {roots} (LORA_STUDIO_DATA_ROOTS adds folders)")
    if notice:
        print(notice)
    return run_server(app, studio, host, args.port)


def lan_address() -> str:
    """This machine's address on the local network (the one a default route would use)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP connect sends nothing
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def share_notice(port: int) -> str:
    """Try to open Gradio's share tunnel; offline it fails fast and the page says so."""
    import secrets

    from gradio.networking import setup_tunnel

    try:
        url = setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
    except Exception as exc:  # noqa: BLE001 - any failure means: no share link
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return (
            f"Share link unavailable ({reason}). The local link (and the LAN link, with --lan) "
            "keep working."
        )
    return f"Public share link: {url}"


def serve(args: argparse.Namespace) -> int:
    """Serve the OpenAI-compatible API alone (beyond loopback, only with a key)."""
    if not is_loopback_host(args.host) and not args.api_key and not args.no_auth:
        print(
            f"error: binding {args.host} serves the API beyond this machine; give --api-key KEY "
            "(or LORA_STUDIO_API_KEY), or --no-auth if you really mean it",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    from core.machine.blas_choice import reexec_with_fast_blas

    reexec_with_fast_blas(["-m", "webapp", *sys.argv[1:]])
    from core.serve.api import create_app
    from webapp.page.studio import Studio

    studio = Studio.open(Settings.from_env())
    app = create_app(studio.registry, studio.engine, api_key=args.api_key)
    available = [e.id for e in studio.registry.entries() if e.available]
    print(f"studio: {studio.settings.home}; {len(available)} model(s) available")
    print(f"OpenAI-compatible API on http://{args.host}:{args.port}/v1")
    return run_server(app, studio, args.host, args.port)


def run_server(app, studio, host: str, port: int) -> int:
    import uvicorn

    try:
        # open page connections (queue streams) must not hold the shutdown for long
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    finally:
        studio.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
