"""The OpenAPI 3.1 document served at /openapi.json (kept in step with app.py routes)."""

from __future__ import annotations

from typing import Any

from akidb_embed import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Malformed request (bad JSON, missing or invalid field)"),
    "401": _json(_ref("Error"), "Missing or wrong API key (when keys are configured)"),
    "404": _json(_ref("Error"), "Unknown model; the message and known_models list the known"),
    "413": _json(_ref("Error"), "Request body larger than the configured limit"),
    "502": _json(_ref("Error"), "The model-server pod failed twice (after one retry)"),
    "503": _json(
        _ref("Error"),
        "Too many requests waiting for a cold model (Retry-After), model Failed, "
        "or model server unavailable",
    ),
    "504": _json(_ref("Error"), "Cold start or model server did not finish in time"),
}

_EMBED_HEADERS = {
    "X-Akidb-Pod": {
        "description": "The model-server pod that answered",
        "schema": {"type": "string"},
    },
    "X-Akidb-Cold-Start": {
        "description": "Seconds the request waited for the model to start (only when it did)",
        "schema": {"type": "number"},
    },
}

_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "akidb-embed gateway",
            "version": __version__,
            "description": "Multi-model text embeddings; native and OpenAI-compatible APIs.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["type", "message"],
                            "properties": {
                                "type": {"type": "string"},
                                "message": {"type": "string"},
                                "known_models": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    },
                },
                "EmbedRequest": {
                    "type": "object",
                    "required": ["texts"],
                    "additionalProperties": False,
                    "properties": {
                        "model": {"type": "string", "description": "default: the gateway's"},
                        "texts": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        "normalize": {"type": "boolean"},
                        "dimensions": {"type": "integer", "minimum": 1},
                        "input_type": {"enum": ["query", "document", None]},
                        "truncate": {"type": "boolean"},
                    },
                },
                "Usage": {
                    "type": "object",
                    "properties": {
                        "prompt_tokens": {"type": "integer"},
                        "total_tokens": {"type": "integer"},
                    },
                },
                "EmbedResponse": {
                    "type": "object",
                    "required": ["model", "dimension", "embeddings", "usage"],
                    "properties": {
                        "model": {"type": "string"},
                        "dimension": {"type": "integer"},
                        "embeddings": {
                            "type": "array",
                            "items": {"type": "array", "items": {"type": "number"}},
                        },
                        "usage": _ref("Usage"),
                    },
                },
                "OpenAIEmbeddingRequest": {
                    "type": "object",
                    "required": ["input"],
                    "properties": {
                        "model": {"type": "string"},
                        "input": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                            ]
                        },
                        "encoding_format": {"enum": ["float", "base64"]},
                        "dimensions": {"type": "integer", "minimum": 1},
                        "input_type": {"enum": ["query", "document", None]},
                        "user": {"type": "string"},
                    },
                },
                "OpenAIEmbeddingResponse": {
                    "type": "object",
                    "properties": {
                        "object": {"const": "list"},
                        "model": {"type": "string"},
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "object": {"const": "embedding"},
                                    "index": {"type": "integer"},
                                    "embedding": {
                                        "oneOf": [
                                            {"type": "array", "items": {"type": "number"}},
                                            {"type": "string", "contentEncoding": "base64"},
                                        ]
                                    },
                                },
                            },
                        },
                        "usage": _ref("Usage"),
                    },
                },
                "Model": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "aliases": {"type": "array", "items": {"type": "string"}},
                        "default": {"type": "boolean"},
                        "dimension": {"type": ["integer", "null"]},
                        "matryoshka_dimensions": {"type": "array", "items": {"type": "integer"}},
                        "phase": {"type": "string"},
                        "message": {"type": "string"},
                        "pinned": {"type": "boolean"},
                        "ready_pods": {"type": "integer"},
                        "waiting_requests": {"type": "integer"},
                        "last_request_time": {"type": ["string", "null"]},
                        "requested_at": {"type": ["string", "null"]},
                        "active_since": {"type": ["string", "null"]},
                        "performance": {"type": ["object", "null"]},
                    },
                },
            },
        },
        "paths": {
            "/api/v1/embed": {
                "post": {
                    "summary": "Embed texts with a model (held while the model starts)",
                    "security": _SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("EmbedRequest")}},
                    },
                    "responses": {
                        "200": {
                            **_json(_ref("EmbedResponse"), "Embeddings"),
                            "headers": _EMBED_HEADERS,
                        },
                        **_ERRORS,
                    },
                }
            },
            "/api/v1/models": {
                "get": {
                    "summary": "Models with live phase, last request and measured performance",
                    "security": _SECURITY,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "default_model": {"type": "string"},
                                    "models": {"type": "array", "items": _ref("Model")},
                                },
                            },
                            "Models",
                        ),
                        "401": _ERRORS["401"],
                    },
                }
            },
            "/v1/embeddings": {
                "post": {
                    "summary": "OpenAI-compatible embeddings",
                    "security": _SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("OpenAIEmbeddingRequest")}},
                    },
                    "responses": {
                        "200": {
                            **_json(_ref("OpenAIEmbeddingResponse"), "Embeddings"),
                            "headers": _EMBED_HEADERS,
                        },
                        **_ERRORS,
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "OpenAI-compatible model list",
                    "security": _SECURITY,
                    "responses": {"200": {"description": "Model list"}, "401": _ERRORS["401"]},
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "Ready once the model and pod watches have synced",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not synced yet, or draining"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "ok"}}}
            },
        },
    }
