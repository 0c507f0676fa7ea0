"""The real Compose lifecycle against a real Docker engine, with the simulator image.

Needs a Docker engine, Compose v2 and the images that ``python3 -m pytest_glmperf.sim_image``
builds (``.ci/setup-docker.sh`` provides all three). Without an engine these tests skip with
the reason; in CI (``CI=true``) they fail instead, so a broken setup cannot pass unnoticed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_glmperf.compose import ComposeServer, find_compose
from pytest_glmperf.errors import ConfigError, ServerNotReady, ServerStartError
from pytest_glmperf.profiles import ServerProfile, load_registry
from pytest_glmperf.provenance import file_sha256
from pytest_glmperf.server import wait_until_ready

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "compose" / "profiles.yaml"
@pytest.fixture(scope="module")
def sim_profile() -> ServerProfile:
    return load_registry(REGISTRY).get("sim")


@pytest.fixture
def port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def messages() -> list[str]:
    return []


@pytest.fixture
def make(docker_client: Any, sim_profile: ServerProfile, port: int, tmp_path: Path,
         messages: list[str]) -> Iterator[Any]:
    """ComposeServer factory on a free port; whatever it made is gone at the end, even if kept."""
    made: list[ComposeServer] = []

    def factory(profile: ServerProfile | None = None, *, env: dict[str, str] | None = None,
                **kwargs: Any) -> ComposeServer:
        server = ComposeServer(profile or sim_profile, report_dir=tmp_path / "report",
                               env={"SGLANG_HOST_PORT": str(port), **(env or {})},
                               progress=messages.append, **kwargs)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.stop()
        label = {"label": f"com.docker.compose.project={server.project}"}
        for container in docker_client.containers.list(all=True, filters=label):
            container.remove(force=True)
        for network in docker_client.networks.list(filters=label):
            network.remove()


def _snapshot(client: Any) -> dict[str, dict[str, str]]:
    """What `docker ps -a`, `docker network ls` and `docker volume ls` show: id -> compose project."""
    def project(item: Any) -> str:
        return (item.attrs.get("Labels") or item.attrs.get("Config", {}).get("Labels") or {}).get(
            "com.docker.compose.project", "")

    return {"container": {c.id: project(c) for c in client.containers.list(all=True)},
            "network": {n.id: project(n) for n in client.networks.list()},
            "volume": {v.name: project(v) for v in client.volumes.list()}}


def _assert_as_before(client: Any, before: dict[str, dict[str, str]], *ours: str) -> None:
    """Nothing new is left, except what other users of this engine (another project) made meanwhile."""
    after = _snapshot(client)
    for kind, items in after.items():
        new = {key: project for key, project in items.items() if key not in before[kind]}
        left = {key: project for key, project in new.items() if project in ours or not project.startswith("glmperf-")}
        assert not left, f"{kind}s left behind: {left}"


def _project_leftovers(client: Any, project: str) -> list[str]:
    label = {"label": f"com.docker.compose.project={project}"}
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=label)]
            + [f"network {n.name}" for n in client.networks.list(filters=label)])


def _broken_copy(tmp_path: Path, old: str, new: str) -> ServerProfile:
    text = (REPO / "compose" / "compose-sim.yaml").read_text()
    assert old in text
    path = tmp_path / "compose-broken.yaml"
    path.write_text(text.replace(old, new, 1))
    return ServerProfile(name="sim", kind="compose", compose_file=path)


def test_sim_up_ready_provenance_down_leaves_nothing(docker_client: Any, make: Any, messages: list[str],
                                                    port: int) -> None:
    before = _snapshot(docker_client)
    server = make()
    with server:
        assert server.base_url == f"http://127.0.0.1:{port}"
        info = httpx.get(f"{server.base_url}/server_info", timeout=10).json()
        assert "sim_time_scale" in info
        assert httpx.get(f"{server.base_url}/health_generate", timeout=10).status_code == 200
        record = server.provenance()
        assert server.log_path.is_file() and server.log_path.stat().st_size > 0
        assert server.log_tail(20)
    assert record["image"]["id"].startswith("sha256:")
    assert record["image"]["reference"] == "glmperf-sim:latest"
    assert record["compose_file_sha256"] == file_sha256(REPO / "compose" / "compose-sim.yaml")
    assert record["server_info_endpoint"] == "/server_info"
    assert record["server_info"]["sim_time_scale"] == info["sim_time_scale"]
    assert record["host"] and record["startup_s"] > 0 and record["started_at"]
    assert record["gpus"]["count"] == 0 or record["gpus"]["source"] == "nvidia-smi"
    assert record["container"]["image_id"] == record["image"]["id"]
    assert any("ready at" in message for message in messages)
    _assert_as_before(docker_client, before, server.project)


def test_server_killed_mid_run_says_why(docker_client: Any, make: Any) -> None:
    server = make().start()
    assert server.alive() and server.exit_reason() is None
    docker_client.containers.get(server.provenance()["container"]["id"]).kill()
    time.sleep(0.5)
    assert not server.alive()
    reason = server.exit_reason()
    assert reason is not None and "exit code 137" in reason and "listening" in reason
    server.stop()
    assert not _project_leftovers(docker_client, server.project)


def test_keep_running_then_reuse_then_restart(docker_client: Any, make: Any) -> None:
    before = _snapshot(docker_client)
    first = make(keep_running=True).start()
    first.stop()
    assert _project_leftovers(docker_client, first.project), "--keep-running took the server down"
    reused = make(reuse_running=True).start()
    assert reused.reused and reused.project == first.project
    assert reused.provenance()["reused_running_server"] is True
    reused.stop()
    assert _project_leftovers(docker_client, first.project), "a reused server must be left up"
    fresh = make().start()  # the default restarts: the old project goes, a new one comes
    assert fresh.project != first.project and not fresh.reused
    assert not _project_leftovers(docker_client, first.project)
    fresh.stop()
    _assert_as_before(docker_client, before, first.project, fresh.project)


def test_unknown_profile_and_non_compose_profile() -> None:  # needs no engine
    registry = load_registry(REGISTRY)
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'.*sim"):
        registry.get("nope")
    with pytest.raises(ConfigError, match="only kind 'compose'"):
        ComposeServer(registry.get("sim-hicache"), report_dir=Path("unused"))


def test_compose_file_with_syntax_error_names_the_file(docker_client: Any, make: Any, tmp_path: Path) -> None:
    profile = _broken_copy(tmp_path, "    init: true\n", "   init: true\n")
    with pytest.raises(ConfigError, match=r"compose-broken\.yaml is not valid YAML") as caught:
        make(profile).start()
    assert str(profile.compose_file) in str(caught.value)
    profile = _broken_copy(tmp_path, "    init: true\n", "    inti: true\n")  # valid YAML, bad Compose
    with pytest.raises(ConfigError, match=r"compose-broken\.yaml is invalid.*inti"):
        make(profile).start()


def test_missing_image_fails_fast(docker_client: Any, make: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"glmperf-sim:no-such-tag .*not present locally.*pull_policy: never"):
        make(image="glmperf-sim:no-such-tag").start()
    # A file that allows pulling, and a registry that cannot be reached: the pull fails at once.
    profile = _broken_copy(tmp_path, "    pull_policy: never\n", "")
    missing = "127.0.0.1:9/glmperf/missing:v0"
    with pytest.raises(ServerStartError, match="could not be pulled") as caught:
        make(profile, image=missing).start()
    assert missing in str(caught.value)
    assert time.monotonic() - started < 60


def test_container_exiting_at_start_up_carries_the_log_tail(docker_client: Any, make: Any) -> None:
    server = make(env={"GLMPERF_SIM_ARGS": "--port not-a-port"})
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="exited during start-up") as caught:
        server.start()
    assert "not-a-port" in str(caught.value), "the container's own error must be in the message"
    assert time.monotonic() - started < 60
    assert not _project_leftovers(docker_client, server.project)


def test_readiness_timeout(docker_client: Any, make: Any) -> None:
    server = make(env={"GLMPERF_SIM_ARGS": "--sim-slow-start 1000000"}, startup_timeout_s=4)
    started = time.monotonic()
    with pytest.raises(ServerNotReady, match=r"not ready .* after 4 s \(--startup-timeout"):
        server.start()
    assert time.monotonic() - started < 40
    assert not _project_leftovers(docker_client, server.project)


def test_port_taken_by_another_process(docker_client: Any, make: Any, port: int) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        server = make()
        with pytest.raises(ServerStartError, match=rf"host port {port} .* already in use"):
            server.start()
    assert not _project_leftovers(docker_client, server.project)


def test_port_taken_by_another_container(docker_client: Any, make: Any, port: int) -> None:
    stranger = docker_client.containers.run("glmperf-base:bookworm", ["sleep", "300"], detach=True,
                                            ports={"8000/tcp": ("0.0.0.0", port)}, name=f"glmperf-stranger-{port}")
    try:
        with pytest.raises(ServerStartError, match=rf"port {port} .*glmperf-stranger-{port}.*not this profile"):
            make().start()
        stranger.reload()
        assert stranger.status == "running", "a stranger on the port must be left alone"
    finally:
        stranger.remove(force=True)


def test_a_server_started_by_hand_from_the_same_file_is_never_stopped(docker_client: Any, make: Any,
                                                                      port: int) -> None:
    """The compose files tell people to start production servers with `docker compose up`: such a
    server is refused (named, with the way to test it), or tested in place with --reuse-running,
    and in both cases left running."""
    project = f"users-prod-{port}"
    up = [*find_compose(), "-p", project, "-f", str(REPO / "compose" / "compose-sim.yaml")]
    env = {**os.environ, "SGLANG_HOST_PORT": str(port)}
    subprocess.run([*up, "up", "-d"], env=env, check=True, capture_output=True, timeout=120)
    try:
        with pytest.raises(ServerStartError, match=rf"compose project '{project}'.*runs this profile's compose "
                                                   r"file but was not started by pytest-glmperf.*--reuse-running"):
            make().start()
        assert _project_leftovers(docker_client, project), "the user's server was stopped"
        wait_until_ready(f"http://127.0.0.1:{port}", 60.0)
        reused = make(reuse_running=True).start()
        assert reused.reused and reused.project == project
        reused.stop()
        assert _project_leftovers(docker_client, project), "a reused server must be left up"
    finally:
        subprocess.run([*up, "down", "--timeout", "5"], env=env, check=False, capture_output=True, timeout=120)


def test_image_provenance_reads_sglang_build_labels(docker_client: Any, tmp_path: Path) -> None:
    from pytest_glmperf.provenance import image_provenance

    (tmp_path / "Dockerfile").write_text(
        "FROM glmperf-base:bookworm\n"
        "LABEL ai.sglang.build.commit=0123abc ai.sglang.image.tag=v9.9.9\n"
        "ENV SGLANG_BUILD_COMMIT=0123abc SGLANG_IMAGE_TAG=v9.9.9 HF_TOKEN=hf_do_not_leak\n"
    )
    image, _ = docker_client.images.build(path=str(tmp_path), tag="glmperf-test-labelled:1", rm=True)
    try:
        record = image_provenance(docker_client, "glmperf-test-labelled:1")
    finally:
        docker_client.images.remove(image.id, force=True)
    assert record["id"] == image.id and record["build_commit"] == "0123abc"
    assert record["labels"]["ai.sglang.image.tag"] == "v9.9.9"
    assert record["env"] == {"SGLANG_BUILD_COMMIT": "0123abc", "SGLANG_IMAGE_TAG": "v9.9.9"}
    assert "hf_do_not_leak" not in str(record)
    assert image_provenance(docker_client, "glmperf-test-absent:0")["id"] is None


def test_no_compose_anywhere_names_both(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerStartError, match=r"`docker compose`.*`docker-compose`"):
        find_compose()


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pytest_glmperf.compose import ComposeServer
    from pytest_glmperf.profiles import load_registry

    registry, report, port, mode = sys.argv[1:5]
    server = ComposeServer(load_registry(Path(registry)).get("sim"), report_dir=Path(report),
                           env={"SGLANG_HOST_PORT": port})
    if mode == "with":
        with server:
            print("READY", server.project, flush=True)
            while True:
                time.sleep(0.1)
    server.start()  # no `with`: the registry's atexit hook must take it down
    print("READY", server.project, flush=True)
    while True:
        time.sleep(0.1)
""")


@pytest.mark.parametrize(("signum", "mode"), [(signal.SIGTERM, "with"), (signal.SIGINT, "with"),
                                               (signal.SIGTERM, "bare")])
def test_signal_during_a_run_tears_down(docker_client: Any, tmp_path: Path, port: int,
                                        signum: int, mode: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    before = _snapshot(docker_client)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, str(script), str(REGISTRY), str(tmp_path / "report"), str(port), mode],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("READY"), line + child.stdout.read()
        project = line.split()[1]
        assert _project_leftovers(docker_client, project)
        child.send_signal(signum)
        output = child.communicate(timeout=90)[0]
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0, output
    assert not _project_leftovers(docker_client, project), output
    _assert_as_before(docker_client, before, project)
