"""The simulator's own command-line options; every other flag is an SGLang launch_server flag.

``parse_args(argv)`` splits a command line into :class:`SimOptions` (the HTTP layer's
settings) and the engine's :class:`EngineConfig`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import NoReturn

from .config import EngineConfig, parse_server_args
from .faults import Fault, FaultSpecError, parse_faults

__all__ = ["SimOptions", "parse_args"]


@dataclass
class SimOptions:
    """Settings of the HTTP layer (the engine's come from SGLang flags via EngineConfig)."""

    host: str = "127.0.0.1"
    port: int = 30000
    time_scale: float = 10.0
    faults: list[Fault] = field(default_factory=list)
    crash_after_s: float | None = None
    slow_start_s: float = 0.0
    reasoning_share: float = 0.25
    spin_ns: int = 1_000_000
    lag_warn_s: float = 0.1
    keep_sends: int = 1024
    exit_with_parent: bool = False
    seed: int = 0


class _Parser(argparse.ArgumentParser):
    """argparse that raises ValueError instead of exiting, so create_app() can be called from
    Python; the command line turns it into exit status 2 all the same."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _http_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m pytest_glmperf.simulator", allow_abbrev=False,
        description="SGLang-compatible simulator. Other flags are SGLang launch_server flags.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address. Default: %(default)s")
    p.add_argument("--port", type=int, default=30000, help="0 picks a free port. Default: 30000")
    p.add_argument("--time-scale", type=float, default=10.0,
                   help="model seconds per wall second. Default: %(default)s")
    p.add_argument("--sim-fault", action="append", default=[], metavar="SPEC",
                   help="server-wide fault, e.g. 'mid_stream_error:after=20,p=0.1' (repeatable)")
    p.add_argument("--sim-crash-after", type=float, default=None, metavar="S",
                   help="exit the process S model seconds after start")
    p.add_argument("--sim-slow-start", type=float, default=0.0, metavar="S",
                   help="/health_generate answers 503 for the first S model seconds")
    p.add_argument("--sim-reasoning-share", type=float, default=0.25, metavar="F",
                   help="share of output tokens sent as reasoning_content when thinking")
    p.add_argument("--sim-timer-spin-ms", type=float, default=1.0, metavar="MS",
                   help="busy-wait this long before each send deadline for precision")
    p.add_argument("--sim-lag-warn", type=float, default=0.1, metavar="S",
                   help="warn when a step is delivered more than S model seconds late")
    p.add_argument("--sim-keep-sends", type=int, default=1024, metavar="N",
                   help="requests whose chunk send stamps are kept for /glmperf/sends")
    p.add_argument("--sim-exit-with-parent", action="store_true",
                   help="stdin is a pipe held open by the process that started the simulator: at "
                        "its EOF (that process exited, even by SIGKILL) shut down as on SIGTERM")
    return p


def parse_args(argv: list[str]) -> tuple[SimOptions, EngineConfig]:
    """Split the command line into HTTP-layer options and the engine's SGLang flags.

    Raises ValueError naming the bad flag or value.
    """
    parser = _http_parser()
    ns, rest = parser.parse_known_args(argv)
    if ns.time_scale <= 0:
        raise ValueError(f"--time-scale must be > 0, got {ns.time_scale}")
    if not 0.0 <= ns.sim_reasoning_share <= 1.0:
        raise ValueError(f"--sim-reasoning-share must be within [0, 1], got {ns.sim_reasoning_share}")
    try:
        faults = parse_faults(ns.sim_fault)
    except FaultSpecError as exc:
        raise ValueError(f"--sim-fault: {exc}") from None
    own_flags = [flag for action in parser._actions for flag in action.option_strings]
    config = parse_server_args([*rest, "--host", ns.host], other_flags=own_flags)
    opts = SimOptions(
        host=ns.host, port=ns.port, time_scale=ns.time_scale, faults=faults,
        crash_after_s=ns.sim_crash_after, slow_start_s=max(0.0, ns.sim_slow_start),
        reasoning_share=ns.sim_reasoning_share, spin_ns=int(ns.sim_timer_spin_ms * 1e6),
        lag_warn_s=ns.sim_lag_warn, keep_sends=max(0, ns.sim_keep_sends),
        exit_with_parent=ns.sim_exit_with_parent, seed=config.seed,
    )
    return opts, config

