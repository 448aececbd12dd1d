"""Shared test set-up. Fixtures live in tests/fixtures/ (one module per part)."""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.cluster",
]
