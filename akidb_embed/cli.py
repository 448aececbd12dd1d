"""The `akidb-embed` command line.

Each part registers its own sub-commands from `akidb_embed/<part>/cli.py` (a
`register(subparsers)` function). Those modules import nothing heavy at module level
(torch, onnxruntime, kopf), so `akidb-embed --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from akidb_embed import __version__

# Modules that contribute sub-commands, in help order.
COMMAND_MODULES = (
    "akidb_embed.catalog_cli",
    "akidb_embed.conversion.cli",
    "akidb_embed.model_server.cli",
    "akidb_embed.operator.cli",
    "akidb_embed.gateway.cli",
    "akidb_embed.devcluster.cli",
    "akidb_embed.demo",
)


# Sub-commands whose start-up time matters (a model server's cold start): when the
# command line names one, only its module is imported (the others pull in kopf, the
# conversion and cluster code: ~0.3 s measured).
FAST_COMMANDS = {"serve": "akidb_embed.model_server.cli"}


def _command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is no option)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--log-level":
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="akidb-embed",
        description="Multi-model text-embedding serving for GPU edge nodes on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"akidb-embed {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fast = FAST_COMMANDS.get(_command(sys.argv[1:] if argv is None else argv) or "")
    for name in (fast,) if fast else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A part whose optional extra is not installed simply offers no commands.
            if exc.name and exc.name.startswith("akidb_embed"):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
