"""`akidb-embed models`: print the model catalog as JSON."""

from __future__ import annotations

import argparse

from akidb_embed.catalog import catalog_json


def _models(args: argparse.Namespace) -> int:
    print(catalog_json())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help='print the model catalog as JSON ({"models": [...]})')
    p.set_defaults(handler=_models)
