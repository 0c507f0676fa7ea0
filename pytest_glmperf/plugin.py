"""pytest glue: options, parametrization by profile and level, fixtures, the verdict item, hooks.

Everything else lives in ``GlmperfRun``; each hook here is a few lines forwarding to it. The
session's verdict is a test item of its own (``glmperf::verdict``), run after every other:
so the exit code, the terminal, JUnit and the report all carry the one verdict decided.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from .errors import ConfigError, GlmperfError, InconclusiveWarning, MeasurementInvalid
from .settings import OPTIONS, Option, Settings, resolve
from .verdict import INCONCLUSIVE, Claims, SessionVerdict

if TYPE_CHECKING:  # the rest loads when a session measures something, not with every pytest run
    from .client import StreamingClient
    from .levels import GlmperfServer, Target
    from .results import LevelResult, RegressionResult
    from .scenarios import Agent
    from .session import GlmperfRun
    from .thresholds import Thresholds

RUN_KEY = pytest.StashKey["GlmperfRun"]()
SETTINGS_KEY = pytest.StashKey[Settings]()
YIELDED_KEY = pytest.StashKey[list[str]]()  # short forms another installed plugin declares
PROGRESS_EVERY_S = 5.0       # on a terminal
PROGRESS_EVERY_S_LOG = 30.0  # in a log without a terminal (CI): short
VERDICT_NAME = "glmperf::verdict"
MEASURING = ("glmperf_capacity", "glmperf_mixed", "glmperf_regression")  # outcomes a typed result explains


def pytest_addoption(parser: pytest.Parser) -> None:
    """Every option as ``--glmperf-<name>`` (it always works) and as an ini key ``glmperf_<name>``;
    the short forms are added once every installed plugin has declared its own options."""
    group = parser.getgroup("glmperf", "LLM-serving performance (pytest-glmperf); each --glmperf-NAME also "
                                       "answers to --NAME where no other installed plugin declares that name")
    for option, kwargs in _option_kwargs():
        group.addoption(f"--glmperf-{option[2:]}", **kwargs)
    for option in OPTIONS:
        parser.addini(f"glmperf_{option.key}", _help(option), default=None)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """``--profile``, ``--base-url``, …: each short form the README uses, unless another installed
    plugin declares that name (pytest-base-url owns ``--base-url``, pytest-profiling ``--profile``).
    Installed plugins have all declared theirs by now, so none of them can clash with ours."""
    group = parser.getgroup("glmperf")
    yielded = early_config.stash.setdefault(YIELDED_KEY, [])
    for option, kwargs in _option_kwargs():
        try:
            group.addoption(option, **{**kwargs, "help": argparse.SUPPRESS})
        except argparse.ArgumentError:
            yielded.append(option)


def _option_kwargs() -> list[tuple[str, dict[str, Any]]]:
    """(short form, argparse keywords) of every option."""
    found = []
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"default": None, "dest": f"glmperf_{option.key}", "help": _help(option)}
        kwargs.update({"action": "store_true"} if option.flag else {"metavar": option.metavar})
        if option.many:
            kwargs["action"] = "append"
        found.append((option.cli, kwargs))
    found.append(("--image", {"action": "append", "default": [], "dest": "glmperf_image", "metavar": "REF",
                              "help": "image for compose profiles; repeat to compare images side by side"}))
    return found


def _help(option: Option) -> str:
    default = option.default if not isinstance(option.default, tuple) else ",".join(map(str, option.default))
    text = option.help if default is None else f"{option.help}. Default: {default}"
    return text.replace("%", "%%")  # argparse formats help strings with %


def pytest_configure(config: pytest.Config) -> None:
    cli = {o.key: _joined(config.getoption(f"glmperf_{o.key}")) for o in OPTIONS}
    ini = {o.key: config.getini(f"glmperf_{o.key}") for o in OPTIONS}
    try:
        settings = resolve(cli, ini, images=tuple(config.getoption("glmperf_image") or ()))
        config.stash[SETTINGS_KEY] = settings
        _check_rootdir(config, settings)
        asked = set(settings.given) - {o.key for o in OPTIONS if o.env}  # not a store's env variable alone
        if asked or settings.images or _registry_path(config, settings):
            _session_run(config)  # validate everything now: bad input is a usage error
    except GlmperfError as exc:
        raise pytest.UsageError(f"glmperf: {exc}") from None


def _check_rootdir(config: pytest.Config, settings: Settings) -> None:
    """pytest chooses the rootdir before any plugin declares its options, so the PATH of
    ``--profiles-file PATH`` (a space, not ``=``) counts as a test path there and can move the
    rootdir into another repository. Say so rather than write reports under the wrong root."""
    args = [str(a) for a in config.invocation_params.args]
    spelled = {f"--{p}{o.cli[1:]}" for o in OPTIONS if o.metavar and not o.flag for p in ("", "glmperf")}
    values = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in spelled]
    if not any((config.invocation_params.dir / v).exists() for v in values):
        return
    try:
        from _pytest.config.findpaths import determine_setup  # private, hence the broad except below

        meant = determine_setup(inifile=config.option.inifilename, override_ini=config.option.override_ini,
                                args=[str(a) for a in config.option.file_or_dir],
                                rootdir_cmd_arg=config.option.rootdir or None,
                                invocation_dir=config.invocation_params.dir)[0]
    except Exception:
        return
    if Path(meant) != config.rootpath:
        raise ConfigError(f"pytest took an option's PATH for a test path and chose the rootdir {config.rootpath} "
                          f"instead of {meant}: write the option with '=' (e.g. --profiles-file=PATH)")


def _joined(value: Any) -> Any:
    """A repeated option (``--base-url A --base-url B``) as one comma-separated value."""
    return ",".join(value) if isinstance(value, list) else value


def _registry_path(config: pytest.Config, settings: Settings) -> Path | None:
    """The project's own profiles file: --profiles-file (which must exist), else
    compose/profiles.yaml under the rootdir when there is one; None: built-in profiles only."""
    path = Path(settings.get("profiles_file"))
    path = path if path.is_absolute() else config.rootpath / path
    if path.is_file():
        return path
    if "profiles_file" in settings.given:
        raise ConfigError(f"--profiles-file {path} does not exist")
    return None


def _session_run(config: pytest.Config) -> GlmperfRun:
    """The session's GlmperfRun, created on first need."""
    if RUN_KEY not in config.stash:
        from .profiles import load_profiles
        from .session import GlmperfRun

        settings = config.stash[SETTINGS_KEY]
        registry = load_profiles(_registry_path(config, settings))
        config.stash[RUN_KEY] = GlmperfRun(settings, registry, config.rootpath, progress=_progress_sink(config))
    return config.stash[RUN_KEY]


def _progress_sink(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines to the terminal, at most one per label every few seconds on a terminal
    and every half minute in a CI log (no terminal), where every line stays in the log."""
    last: dict[str, float] = {}

    def write(text: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        label = text.split(":", 1)[0]
        now = time.monotonic()
        every = PROGRESS_EVERY_S if getattr(reporter, "isatty", False) else PROGRESS_EVERY_S_LOG
        if reporter is None or now - last.get(label, 0.0) < every:
            return
        last[label] = now
        if capture is None:
            reporter.write_line(text)
            return
        with capture.global_and_fixture_disabled():  # levels run in fixtures, under fd capture
            reporter.write_line(text)
    return write


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if RUN_KEY not in config.stash:
        return None
    run = config.stash[RUN_KEY]
    levels = ",".join(str(n) for n in next(iter(run.run_settings.values())).levels)
    header = [f"glmperf: targets={','.join(t.key for t in run.targets)} levels={levels} report-dir={run.report_root}"]
    if run.references:
        header.append("glmperf: compared with the reference " + ", ".join(
            f"{later} -> {first}" for later, first in run.references.items()))
    yielded = sorted(config.stash.get(YIELDED_KEY, []))
    if yielded:
        header.append(f"glmperf: {', '.join(yielded)} belong to another plugin here; "
                      f"use {', '.join('--glmperf-' + name[2:] for name in yielded)}")
    return header


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "glmperf_target" not in metafunc.fixturenames:
        return
    try:
        run = _session_run(metafunc.config)
    except GlmperfError as exc:
        raise pytest.UsageError(f"glmperf: {exc}") from None
    metafunc.parametrize("glmperf_target", run.targets, ids=[t.key for t in run.targets],
                         indirect=True, scope="session")
    if "glmperf_level" in metafunc.fixturenames:
        levels = sorted({n for s in run.run_settings.values() for n in s.levels})
        metafunc.parametrize("glmperf_level", levels, ids=[f"c{n}" for n in levels], indirect=True)
    if "glmperf_regression" in metafunc.fixturenames:
        from .regression import METRICS, MIXED_CHECKS

        levels = sorted({n for s in run.run_settings.values() for n in s.levels})
        cases = [(n, m.name) for n in levels for m in METRICS] + [(None, "max_usable")] + \
            [(None, name) for name in MIXED_CHECKS]
        metafunc.parametrize("glmperf_regression", cases, indirect=True,
                             ids=[f"c{n}-{m}" if n else m for n, m in cases])


def _params(item: pytest.Item) -> dict[str, Any]:
    callspec = getattr(item, "callspec", None)
    return dict(callspec.params) if callspec else {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop (profile, level) pairs that the profile's own level list does not include."""
    if RUN_KEY not in config.stash:
        return
    run = config.stash[RUN_KEY]
    keep, drop = [], []
    for item in items:
        params = _params(item)
        target, level, check = (params.get(k) for k in ("glmperf_target", "glmperf_level", "glmperf_regression"))
        if check is not None:
            level = check[0]
        planned = target is None or level is None or level in run.run_settings[target.key].levels
        if check is not None and not run.compares(target.key):
            planned = False  # regression items exist only with --compare, or for a later image / URL
        (keep if planned else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Once the selection is final (-k, --lf and the rest): what it claims, checked before any
    server starts; then the verdict item goes last."""
    config = session.config
    if RUN_KEY not in config.stash or config.option.collectonly:
        return
    glmperf = [item for item in session.items if "glmperf_target" in getattr(item, "fixturenames", ())]
    if not glmperf:
        return
    run = config.stash[RUN_KEY]
    capacity: dict[str, set[int]] = {}
    mixed: set[str] = set()
    regression: set[tuple[str, int | None, str]] = set()
    for item in glmperf:
        params, names = _params(item), set(item.fixturenames)
        key = params["glmperf_target"].key
        if "glmperf_capacity" in names:
            capacity.setdefault(key, set()).add(params["glmperf_level"])
        if "glmperf_mixed" in names:
            mixed.add(key)
        if "glmperf_regression" in names:
            level, metric = params["glmperf_regression"]
            regression.add((key, level, metric))
    try:
        run.prepare(capacity)
    except ConfigError as exc:
        raise pytest.UsageError(f"glmperf: {exc}") from None
    run.claim(Claims(frozenset(capacity), frozenset(mixed), frozenset(regression)))
    untyped = {item.nodeid for item in glmperf if not set(item.fixturenames) & set(MEASURING)}
    config.pluginmanager.register(_OutcomeWatch(run, untyped), "glmperf-outcomes")
    session.items.append(VerdictItem.from_parent(session, name=VERDICT_NAME, nodeid=VERDICT_NAME))


class VerdictFailed(Exception):
    """The session verdict is not a pass."""


class VerdictItem(pytest.Item):
    """The session's verdict as a test: it fails exactly when the gate does."""

    def runtest(self) -> None:
        verdict = self.config.stash[RUN_KEY].decide()
        self.user_properties += [("glmperf_verdict", verdict.status), ("glmperf_verdict_line", verdict.line())]
        if not verdict.ok:
            raise VerdictFailed(verdict)
        if verdict.status == INCONCLUSIVE:
            warnings.warn(InconclusiveWarning(verdict.line()), stacklevel=1)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, VerdictFailed):
            verdict: SessionVerdict = excinfo.value.args[0]
            return "\n".join([verdict.line(), *(f"  - {r}" for r in (*verdict.failures, *verdict.inconclusive))])
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "glmperf", None, "glmperf session verdict"


class _OutcomeWatch:
    """A glmperf test that fails outside the typed results (a user's own test using the
    fixtures) fails the verdict too: registered once the selection is known."""

    def __init__(self, run: GlmperfRun, untyped: set[str]) -> None:
        self.run, self.untyped = run, untyped

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and report.nodeid in self.untyped and report.nodeid not in self.run.failed_tests:
            self.run.failed_tests.append(report.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Attach the server's log tail to a failed glmperf test."""
    report = yield
    server = getattr(item, "funcargs", {}).get("glmperf_server")
    if report.failed and server is not None:  # the fixture's value: a GlmperfServer
        tail = server.handle.log_tail(200)
        if tail:
            report.sections.append(("glmperf server log (last 200 lines)", tail))
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if RUN_KEY not in config.stash or not config.stash[RUN_KEY].measured_anything:
        return
    from .render import render_terminal

    run = config.stash[RUN_KEY]
    report = run.snapshot()
    terminalreporter.section("glmperf")
    render_terminal(report, terminalreporter.write_line)
    for target in report.targets:
        best = target.best
        if best:
            aggregate = best.stats.as_dict().get("aggregate_tok_s") or 0.0
            below = [f"c={lv.concurrency} {lv.status}" for lv in target.levels
                     if lv.concurrency < best.concurrency and not lv.usable]
            terminalreporter.write_line(f"glmperf verdict: {target.key} usable up to concurrency "
                                        f"{best.concurrency} ({aggregate:.1f} tok/s)"
                                        + (f", but not shown below it: {', '.join(below)}" if below else ""))
        elif target.levels:
            terminalreporter.write_line(f"glmperf verdict: {target.key} usable at no measured concurrency level")
    terminalreporter.write_line(f"glmperf report: {run.report_dir / 'report.md'}")
    if run.verdict:
        terminalreporter.write_line(run.verdict.line(), bold=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if RUN_KEY in session.config.stash:
        session.config.stash[RUN_KEY].finish(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)


# -- fixtures: the plugin's public API ---------------------------------------------------
@pytest.fixture(scope="session")
def glmperf_run(request: pytest.FixtureRequest) -> GlmperfRun:
    """The session's run: settings, targets, results."""
    return _session_run(request.config)


@pytest.fixture(scope="session")
def glmperf_target(request: pytest.FixtureRequest, glmperf_run: GlmperfRun) -> Target:
    """The profile (and image) under test; parametrized over --profile and --image."""
    return getattr(request, "param", glmperf_run.targets[0])


@pytest.fixture(scope="session")
def glmperf_server(glmperf_run: GlmperfRun, glmperf_target: Target) -> Iterator[GlmperfServer]:
    """The live server of one target: started once, stopped when the next target starts."""
    try:
        server = glmperf_run.open_server(glmperf_target)
    except GlmperfError as exc:  # the message carries the reason and log tail; no traceback of ours
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = None
    if reason:
        pytest.fail(reason, pytrace=False)
    try:
        yield server
    finally:
        glmperf_run.close_server(server)


@pytest.fixture
def glmperf_level(request: pytest.FixtureRequest) -> int:
    """A concurrency level from --concurrency-levels."""
    return int(request.param)


@pytest.fixture
def glmperf_thresholds(glmperf_server: GlmperfServer) -> Thresholds:
    """The usability bar in force for this server's profile (override in a conftest to change)."""
    return glmperf_server.thresholds


@pytest_asyncio.fixture
async def glmperf_client(glmperf_server: GlmperfServer) -> AsyncIterator[StreamingClient]:
    """A warmed streaming client bound to the server, for ``async def`` tests."""
    async with glmperf_server.client(concurrency=16) as client:
        yield client


@pytest.fixture
def glmperf_capacity(glmperf_run: GlmperfRun, glmperf_server: GlmperfServer, glmperf_level: int,
                     glmperf_thresholds: Thresholds, request: pytest.FixtureRequest) -> LevelResult:
    """The capacity workload at this level (measured once per session); the result carries the verdict.

    With --capacity-search the first level item runs the whole bisection; levels it did not
    need are skipped with the reason.
    """
    try:
        result = glmperf_run.level(glmperf_server, glmperf_level, glmperf_thresholds)
    except LookupError:
        best = glmperf_run.search(glmperf_server)["max_usable"]
        pytest.skip(f"not needed: capacity search settled max usable = {best} without c={glmperf_level}")
    return _recorded(result, request, glmperf_server)


@pytest.fixture
def glmperf_mixed(glmperf_run: GlmperfRun, glmperf_server: GlmperfServer, glmperf_thresholds: Thresholds,
                  request: pytest.FixtureRequest) -> LevelResult:
    """The mixed coding-agent workload (measured once per session); the verdict is on its decode streams."""
    return _recorded(glmperf_run.mixed(glmperf_server, glmperf_thresholds), request, glmperf_server)


@pytest.fixture
def glmperf_scenario(glmperf_server: GlmperfServer, glmperf_thresholds: Thresholds, request: pytest.FixtureRequest
                     ) -> Callable[..., Awaitable[LevelResult]]:
    """Run your own agent coroutine at a concurrency level: ``await glmperf_scenario(fn, concurrency=4,
    duration_s=60)``; then ``result.assert_usable()``. The result joins the report and the verdict."""
    async def run(agent: Callable[[Agent], Awaitable[None]], *, concurrency: int, duration_s: float,
                  name: str = "scenario") -> LevelResult:
        result = await glmperf_server.scenario(agent, concurrency=concurrency, duration_s=duration_s, name=name,
                                               thresholds=glmperf_thresholds)
        return _recorded(result, request, glmperf_server)
    return run


@pytest.fixture
def glmperf_regression(request: pytest.FixtureRequest, glmperf_run: GlmperfRun, glmperf_server: GlmperfServer
                       ) -> RegressionResult:
    """One comparison with the reference (--compare's baseline, or this session's first image
    or --base-url server), on this session's data: what it needs is measured now if no test
    measured it yet."""
    from .results import RegressionResult

    level, metric = request.param
    check = glmperf_run.regression_check(glmperf_server, level, metric)
    return RegressionResult(check.name, check, glmperf_run.judging.inconclusive_fails)


def _recorded(result: LevelResult, request: pytest.FixtureRequest, server: GlmperfServer) -> LevelResult:
    """Measured values, limits, status and the server's identity into the test's JUnit
    <properties>; an invalid measurement errors the test here.

    Appended to ``user_properties`` directly: the ``record_property`` fixture warns under
    pytest's default junit_family (xunit2) even though the XML carries the properties alike.
    """
    request.node.user_properties.extend([*result.properties(), *_server_properties(server)])
    try:
        result.raise_if_invalid()
    except MeasurementInvalid as exc:  # fails the fixture: the test reports an error, not a verdict
        pytest.fail(f"MeasurementInvalid: {exc}", pytrace=False)
    return result


def _server_properties(server: GlmperfServer) -> list[tuple[str, Any]]:
    """Which build answered: the server's version and, for an image, its content id."""
    from .provenance import image_id, server_version

    provenance = server.provenance()
    found = [("glmperf_server_version", server_version(provenance)), ("glmperf_image_id", image_id(provenance))]
    return [(name, value) for name, value in found if value]
