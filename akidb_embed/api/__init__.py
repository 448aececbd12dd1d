"""The HTTP API contract shared by the gateway and the model server.

- `errors`: the one error type (`ApiError`) and its closed set of codes -> statuses
- `codec`: the one JSON reader (msgspec, typed) and writer (orjson)
- `types`: request and response types of every route; the call objects they become
- `limits`: what one model accepts (`ModelLimits`), checked on the model server
- `encoding`: output types on the wire (float, base64, int8, uint8, binary, ubinary)
- `responses`: response bodies
- `routes`: the route table both apps register from
- `openapi`: the OpenAPI documents, generated from the above
- `names`: the names a model answers to (gateway and model server alike)
- `http`: aiohttp glue (JSON responses, the error middleware)
"""
