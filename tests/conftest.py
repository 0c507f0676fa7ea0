"""Shared test set-up: pytester for running the plugin on inner test projects."""

import signal
from pathlib import Path

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "compose" / "profiles.yaml"


def pytest_configure() -> None:
    """Give the Ctrl-C tests an interruptible child even when the run itself was started in the
    background (`.ci/run &`, nohup): a non-interactive shell then starts it with SIGINT ignored,
    every child inherits that, and Python installs no KeyboardInterrupt handler in them. A Python
    handler here is reset to the default on exec, so the children get theirs back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
