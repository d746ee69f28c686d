"""Shared fixtures. Each area's service fixtures live in tests/fixtures/ and are plugged in here."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.registry",
    "tests.fixtures.models",
    "tests.fixtures.mqtt",
    "tests.fixtures.kube",
    "tests.fixtures.realnodes",
    "tests.fixtures.agent",
    "tests.fixtures.fleet",
    "tests.fixtures.rollout",
]
