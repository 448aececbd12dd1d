"""Running the servers' event loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("akidb_embed")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop where it is installed (the server extras pull it in).

    uvloop roughly halves the per-request cost of aiohttp's HTTP handling, which is what
    bounds a model server on a GPU, where inference itself takes a millisecond or two.
    """
    try:
        import uvloop
    except ImportError:
        log.info("uvloop not installed; using the default asyncio event loop")
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
