"""schemathesis against the generated /openapi.json of the gateway (API keys on and
off) and of the model servers (an embedder and a reranker), with every check it has.

The one allowance: a request the document accepts may still meet a model limit that no
JSON Schema can state. On a model server that is only `text_too_long` (tokens, not
characters, are limited); on the gateway, whose document describes every model's API
at once, also the other model limits (a model's own dimensions, vocabulary, task).
Those must come back as the 400 with that code, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from akidb_embed.api.errors import MODEL_LIMIT_CODES, Code
from tests.gateway.live import live_stack

pytestmark = pytest.mark.slow

KEY = "sk-schemathesis"
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


def _accepting_limits(allowed: frozenset[str]) -> Any:
    def positive_data_accepted_unless_a_model_limit(ctx: Any, response: Any, case: Any) -> Any:
        try:
            return positive_data_acceptance(ctx, response, case)
        except AssertionError:
            if response.status_code == 400:
                code = (response.json().get("error") or {}).get("code")
                if code in allowed:
                    return None
            raise

    return positive_data_accepted_unless_a_model_limit


def _checks(allowed: frozenset[str]) -> list[Any]:
    load_all_checks()
    every = [c for c in CHECKS.get_all() if c is not positive_data_acceptance]
    return [*every, _accepting_limits(allowed)]


GATEWAY_CHECKS = _checks(frozenset(str(c) for c in MODEL_LIMIT_CODES))
SERVER_CHECKS = _checks(frozenset({str(Code.TEXT_TOO_LONG)}))


@pytest.fixture(scope="module")
def stack(minilm_artifact: Path, tiny_bert_reranker_artifact: Path) -> Iterator[dict[str, Any]]:
    with live_stack(
        minilm_artifact, tiny_bert_reranker_artifact, api_keys=frozenset({KEY})
    ) as live:
        yield live


@pytest.fixture(scope="module")
def open_stack(
    minilm_artifact: Path, tiny_bert_reranker_artifact: Path
) -> Iterator[dict[str, Any]]:
    with live_stack(minilm_artifact, tiny_bert_reranker_artifact) as live:
        yield live


def fuzz(url: str, checks: list[Any], headers: dict[str, str] | None = None) -> int:
    """Every operation of the document at `url`, positive and negative data; the count."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    cases = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal cases
                cases += 1
                case.call_and_validate(headers=headers, checks=checks)

            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid (a GET without parameters): no negative cases.
                assert mode is GenerationMode.NEGATIVE and operation.method == "get"
    return cases


def test_gateway_with_api_keys(stack: dict[str, Any]) -> None:
    cases = fuzz(stack["url"], GATEWAY_CHECKS, {"Authorization": f"Bearer {KEY}"})
    print(f"gateway with API keys: {cases} cases")


def test_gateway_without_api_keys(open_stack: dict[str, Any]) -> None:
    print(f"gateway without API keys: {fuzz(open_stack['url'], GATEWAY_CHECKS)} cases")


def test_embedding_model_server(open_stack: dict[str, Any]) -> None:
    print(f"embedding model server: {fuzz(open_stack['embedder'].url, SERVER_CHECKS)} cases")


def test_reranker_model_server(open_stack: dict[str, Any]) -> None:
    print(f"reranker model server: {fuzz(open_stack['reranker'].url, SERVER_CHECKS)} cases")
