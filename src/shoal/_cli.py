"""``shoal`` command line. ``shoal serve MODULE:APP`` runs a service the documented way."""

from __future__ import annotations

import argparse
import os
import sys

from shoal._errors import ConfigurationError


def main(argv: list[str] | None = None) -> int:
    """``shoal``: the platform's CLI when installed, else just ``shoal serve``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "serve":
        try:
            from shoal.platform.cli import main as platform_main  # noqa: PLC0415
        except ImportError:
            pass
        else:
            sys.argv = ["shoal", *args]
            platform_main()
            return 0
    return serve_main(args)


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shoal", description="Shoal microservice platform.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve an ASGI or WSGI app with probes, drain and JSON logs",
        description="Serve MODULE:APP (uvicorn for ASGI, gunicorn gthread for WSGI). "
        "Settings come from the environment (PORT, SHOAL_SERVICE, SHOAL_DRAIN_GRACE ...); "
        "the flags override them.",
    )
    serve.add_argument("app", help="import string, e.g. examples.shop.orders.app:app")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default $PORT or 8000)")
    serve.add_argument("--interface", choices=["auto", "asgi", "wsgi"], default="auto")
    serve.add_argument("--threads", type=int, default=8, help="WSGI worker threads")
    args = parser.parse_args(argv)

    from shoal._serve import serve as run  # noqa: PLC0415 - keep `shoal --help` light
    from shoal._settings import Settings  # noqa: PLC0415

    if args.host:
        os.environ["SHOAL_HOST"] = args.host
    if args.port is not None:
        os.environ["PORT"] = str(args.port)
    try:
        settings = Settings.from_env()
        run(args.app, interface=args.interface, threads=args.threads, settings=settings)
    except ConfigurationError as exc:
        print(f"shoal serve: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
