from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Sub-commands of this part (filled in by its implementation)."""
