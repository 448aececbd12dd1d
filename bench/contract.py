"""Request decoding cost: the contract's msgspec decode against the alternatives.

For a native embed body of 1 and 32 texts: `akidb_embed.api.codec.decode` (msgspec,
decode + every field check in one pass), orjson.loads alone (parsing, no checks: the
floor of any parse-then-check approach), and pydantic's `model_validate_json` of the
same model; printed as microseconds and as ratios to msgspec in the same run.

    .venv/bin/python -m bench.contract
"""

from __future__ import annotations

import timeit
from typing import Annotated, Literal

import orjson
import pydantic

from akidb_embed.api import codec
from akidb_embed.api.types import EmbedRequest

Text = Annotated[str, pydantic.Field(min_length=1)]


class PydanticEmbed(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    texts: Annotated[list[Text], pydantic.Field(min_length=1)]
    model: Annotated[str, pydantic.Field(min_length=1)] | None = None
    normalize: bool | None = None
    dimensions: Annotated[int, pydantic.Field(ge=1)] | None = None
    input_type: Literal["query", "document"] | None = None
    truncate: bool = True
    encoding_format: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] = "float"


def main() -> int:
    for n in (1, 32):
        body = orjson.dumps(
            {
                "texts": [f"The quick brown fox jumps over the lazy dog {i}" for i in range(n)],
                "model": "all-minilm-l6-v2",
                "input_type": "query",
            }
        )
        runs = 20000
        times = {
            name: timeit.timeit(fn, number=runs) / runs * 1e6
            for name, fn in (
                ("msgspec (the contract)", lambda b=body: codec.decode(EmbedRequest, b)),
                ("orjson.loads, no checks", lambda b=body: orjson.loads(b)),
                ("pydantic validate_json", lambda b=body: PydanticEmbed.model_validate_json(b)),
            )
        }
        base = times["msgspec (the contract)"]
        for name, us in times.items():
            print(f"{n:2d} texts  {name:24s} {us:6.2f} us  {us / base:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
