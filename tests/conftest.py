"""Shared pytest fixtures: each lives in tests/fixtures/<name>.py and is registered here."""

pytest_plugins = [
    "tests.fixtures.ports",
    "tests.fixtures.daemon",
    "tests.fixtures.paper_tws",
    "tests.fixtures.mosquitto",
]
