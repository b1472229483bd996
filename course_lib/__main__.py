"""Command line: ``python -m course_lib doctor`` and ``python -m course_lib assets build``."""
from __future__ import annotations

import argparse
import json
import sys
import time


def _doctor(_: argparse.Namespace) -> int:
    from .env import doctor

    healthy, lines = doctor()
    print("\n".join(lines))
    print("healthy" if healthy else "NOT healthy: see the lines marked MISSING")
    return 0 if healthy else 1


def _assets_build(_: argparse.Namespace) -> int:
    from . import assets
    from .assets.cache import read_manifest

    for name, build in assets.BUILDERS.items():
        start = time.perf_counter()
        folder = build()
        manifest = read_manifest(folder)
        summary = {k: v for k, v in manifest.items() if k not in ("recipe", "files", "name")}
        print(f"{name}: ready in {time.perf_counter() - start:.1f} s  {json.dumps(summary)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m course_lib")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="profile, versions, device and asset cache; "
                                       "exit 1 when something needed is missing").set_defaults(run=_doctor)
    assets_parser = commands.add_parser("assets", help="manage the offline assets")
    assets_commands = assets_parser.add_subparsers(dest="assets_command", required=True)
    assets_commands.add_parser("build", help="build or verify every cached asset").set_defaults(
        run=_assets_build)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
