"""The API contract on its own: decoding, errors, limits, output types, names, document."""

from __future__ import annotations

import numpy as np
import pytest

from akidb_embed.api import codec, encoding, openapi, routes
from akidb_embed.api import types as t
from akidb_embed.api.errors import STATUS, ApiError, Code
from akidb_embed.api.limits import ModelLimits
from akidb_embed.api.names import model_aliases

LIMITS = ModelLimits(
    names=["m", "org/m"], task="embed", dimensions=[128, 384], vocab_size=1000, max_inputs=4
)


def test_every_code_has_one_status_and_the_body_carries_type_and_code() -> None:
    assert set(STATUS) == set(Code)
    err = ApiError(Code.MODEL_NOT_FOUND, "nope", details={"known_models": ["a"]})
    assert err.status == 404
    assert err.body() == {
        "error": {
            "type": "not_found_error",
            "code": "model_not_found",
            "message": "nope",
            "known_models": ["a"],
        }
    }


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"", Code.EMPTY_BODY, "empty"),
        (b"{not json", Code.INVALID_JSON, "not valid JSON"),
        (b"\xff\xfe", Code.INVALID_JSON, "not valid JSON"),
        (b"[1, 2]", Code.INVALID_JSON, "must be a JSON object"),
        (b"{}", Code.MISSING_FIELD, "missing required field `texts`"),
        (b'{"texts": "hi"}', Code.INVALID_FIELD, "Expected `array`, got `str` - at `$.texts`"),
        (b'{"texts": []}', Code.INVALID_FIELD, "length >= 1 - at `$.texts`"),
        (b'{"texts": ["a", 3]}', Code.INVALID_FIELD, "got `int` - at `$.texts[1]`"),
        (b'{"texts": ["a", ""]}', Code.INVALID_FIELD, "length >= 1 - at `$.texts[1]`"),
        (b'{"texts": ["a"], "normalize": "yes"}', Code.INVALID_FIELD, "$.normalize"),
        (b'{"texts": ["a"], "dimensions": true}', Code.INVALID_FIELD, "$.dimensions"),
        (b'{"texts": ["a"], "dimensions": 0}', Code.INVALID_FIELD, ">= 1 - at `$.dimensions`"),
        (b'{"texts": ["a"], "input_type": "passage"}', Code.INVALID_FIELD, "$.input_type"),
        (b'{"texts": ["a"], "encoding_format": "f16"}', Code.INVALID_FIELD, "$.encoding_format"),
        (b'{"texts": ["a"], "model": 5}', Code.INVALID_FIELD, "$.model"),
        (b'{"text": ["a"]}', Code.UNKNOWN_FIELD, "unknown field `text`"),
        # deeply nested JSON is a 400, never a RecursionError (a 500)
        (b'{"texts": ["a"], "x": ' + b"[" * 50000 + b"]" * 50000 + b"}", Code.UNKNOWN_FIELD, "x"),
    ],
)
def test_native_request_refusals(body: bytes, code: Code, needle: str) -> None:
    with pytest.raises(ApiError) as info:
        codec.decode(t.EmbedRequest, body)
    assert info.value.code == code and info.value.status == 400
    assert needle in info.value.message


def test_deep_nesting_in_an_ignored_field_is_a_400() -> None:
    deep = b'{"input": "a", "extra": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    with pytest.raises(ApiError) as info:
        codec.decode(t.OpenAIEmbeddingRequest, deep)
    assert info.value.code == Code.INVALID_JSON and "nested too deeply" in info.value.message
    deep_objects = b'{"input": "a", "extra": ' + b'{"a":' * 100000 + b"1" + b"}" * 100001
    with pytest.raises(ApiError):
        codec.decode(t.OpenAIEmbeddingRequest, deep_objects)


@pytest.mark.parametrize(
    ("body", "texts", "ids"),
    [
        (b'{"input": "hi", "user": "u"}', ["hi"], None),
        (b'{"input": ["a", "b"]}', ["a", "b"], None),
        (b'{"input": [101, 7, 102]}', None, [[101, 7, 102]]),
        (b'{"input": [[1, 2], [3]]}', None, [[1, 2], [3]]),
    ],
)
def test_openai_input_forms(body: bytes, texts: list[str] | None, ids: list | None) -> None:
    call = codec.decode(t.OpenAIEmbeddingRequest, body).call()
    assert call.texts == texts and call.token_ids == ids


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"input": ["a", 1]}', "mixes texts, token ids"),
        (b'{"input": [[1], 2]}', "mixes"),
        (b'{"input": []}', "`input` is empty"),
        (b'{"input": [[]]}', "length >= 1"),
        (b'{"input": [-1]}', ">= 0"),
        (b'{"input": ""}', "length >= 1"),
        (b'{"input": {"a": 1}}', "$.input"),
    ],
)
def test_openai_input_refusals(body: bytes, needle: str) -> None:
    with pytest.raises(ApiError, match="invalid request") as info:
        codec.decode(t.OpenAIEmbeddingRequest, body)
    assert needle in info.value.message


def test_model_limits() -> None:
    LIMITS.check_model("ORG/M")
    with pytest.raises(ApiError) as info:
        LIMITS.check_model("other")
    assert info.value.status == 404 and "serves 'm'" in info.value.message
    ok = t.EmbedCall(["a"], dimensions=128)
    LIMITS.check_embed(ok)
    for call, code, needle in [
        (t.EmbedCall(["a"] * 5), Code.TOO_MANY_INPUTS, "5 inputs in one request"),
        (t.EmbedCall(["a"], dimensions=100), Code.UNSUPPORTED_DIMENSIONS, "allowed: [128, 384]"),
        (t.EmbedCall(None, token_ids=[[1, 5000]]), Code.TOKEN_IDS_NOT_IN_VOCABULARY, "5000"),
    ]:
        with pytest.raises(ApiError) as info:
            LIMITS.check_embed(call)
        assert info.value.code == code and needle in info.value.message
    # LangChain's tiktoken ids: the error says how to send text instead
    with pytest.raises(ApiError, match="check_embedding_ctx_length=False"):
        LIMITS.check_embed(t.EmbedCall(None, token_ids=[[100264, 9906]]))
    with pytest.raises(ApiError) as info:
        LIMITS.check_rerank(t.RerankCall("q", ["d"]))
    assert info.value.code == Code.WRONG_TASK and "embedding model" in info.value.message


def test_output_types() -> None:
    v = np.array([[1.0, -2.5, 0.125, 0.0, 0.5, -0.5, 2.0, -1.0, 0.25]], dtype=np.float32)
    assert encoding.to_base64(v[:, :3]) == ["AACAPwAAIMAAAAA+"]
    np.testing.assert_array_equal(encoding.from_base64("AACAPwAAIMAAAAA+"), v[0, :3])
    # 9 dimensions -> 2 bytes; bit 7 of byte 0 is dimension 0
    bits = (v > 0).astype(int)[0]
    ub = encoding.to_ubinary(v)
    assert ub.shape == (1, 2) and ub.dtype == np.uint8
    assert ub[0, 0] == int("".join(map(str, bits[:8])), 2) and ub[0, 1] == bits[8] << 7
    np.testing.assert_array_equal(encoding.to_binary(v), (ub.astype(int) - 128).astype(np.int8))
    ranges = np.array([[-2.5] * 9, [2.5] * 9], dtype=np.float32)
    i8, u8 = encoding.to_int8(v, ranges), encoding.to_uint8(v, ranges)
    assert i8.dtype == np.int8 and u8.dtype == np.uint8
    assert u8[0, 1] == 0 and i8[0, 1] == -128  # the minimum
    np.testing.assert_array_equal(i8.astype(int) + 128, u8.astype(int))
    assert encoding.to_uint8(np.full((1, 9), 9.0, np.float32), ranges)[0, 0] == 255  # clipped
    cal = encoding.calibrate(np.array([[0, 1], [2, -1]], dtype=np.float32))
    np.testing.assert_array_equal(cal, [[0, -1], [2, 1]])
    sizes = {e: encoding.bytes_per_embedding(e, 384) for e in t.ENCODING_FORMATS}
    assert sizes == {
        "float": 1536,
        "base64": 2048,
        "int8": 384,
        "uint8": 384,
        "binary": 48,
        "ubinary": 48,
    }


def test_aliases_shared_by_gateway_and_server() -> None:
    names = model_aliases("minilm", "sentence-transformers/all-MiniLM-L6-v2")
    assert [(a.name, a.kind) for a in names] == [
        ("minilm", "name"),
        ("all-minilm-l6-v2", "catalog-id"),
        ("sentence-transformers/all-MiniLM-L6-v2", "repo-id"),
    ]  # the catalog alias all-MiniLM-L6-v2 is the catalog id, case aside
    # a server converted from a local folder answers to the catalog id it recognised
    local = model_aliases("model", "/models/minilm", "all-minilm-l6-v2")
    assert "all-minilm-l6-v2" in [a.name for a in local]
    assert [a.name for a in model_aliases("mine", "acme/custom")] == ["mine", "acme/custom"]


def test_documents_follow_the_route_table_and_the_limits() -> None:
    gw = openapi.document(routes.gateway_routes(), title="gw", gateway=True, secured=False)
    assert "securitySchemes" not in gw["components"]
    assert all(op["security"] == [] for p in gw["paths"].values() for op in p.values())
    assert {r.path for r in routes.gateway_routes()} == set(gw["paths"])
    secured = openapi.document(routes.gateway_routes(), title="gw", gateway=True, secured=True)
    embed = secured["paths"]["/v1/embeddings"]["post"]
    assert embed["security"] == [{"bearer": []}] and "401" in embed["responses"]
    assert secured["paths"]["/healthz"]["get"]["security"] == []
    schemas = gw["components"]["schemas"]
    assert schemas["EmbedRequest"]["properties"]["texts"]["items"]["minLength"] == 1
    assert schemas["EmbedRequest"]["additionalProperties"] is False
    server = openapi.document(
        routes.server_routes("embed"), title="s", gateway=False, limits=LIMITS
    )
    assert "/v1/rerank" not in server["paths"] and "/tei/embed" in server["paths"]
    req = server["components"]["schemas"]["EmbedRequest"]["properties"]
    assert req["dimensions"]["anyOf"][0] == {"enum": [128, 384]}
    assert req["texts"]["maxItems"] == 4
    assert req["model"]["anyOf"][0] == {"enum": ["m", "org/m"]}
    ids = server["components"]["schemas"]["OpenAIEmbeddingRequest"]["properties"]["input"]
    assert ids["anyOf"][2]["items"]["maximum"] == 999


def test_whole_floats_are_integers_as_in_json_schema() -> None:
    call = codec.decode(
        t.OpenAIEmbeddingRequest, b'{"input": [[101, 7.0, 1e2]], "dimensions": 8.0}'
    )
    assert call.call().token_ids == [[101, 7, 100]] and call.dimensions == 8
    for bad in (b'{"input": [[1.5]]}', b'{"input": ["1"], "dimensions": "8"}'):
        with pytest.raises(ApiError, match="invalid request"):
            codec.decode(t.OpenAIEmbeddingRequest, bad)
