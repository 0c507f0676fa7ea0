"""Shared test set-up: pytester for running the plugin on inner test projects."""

from pathlib import Path

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "compose" / "profiles.yaml"
