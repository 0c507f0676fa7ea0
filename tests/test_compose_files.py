"""The compose files say what the field report says, and provenance redacts secrets.

No Docker engine needed, except for the one test that asks Compose itself to interpolate.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_glmperf.profiles import load_registry
from pytest_glmperf.provenance import REDACTED, gpu_count, is_secret_name, redact

COMPOSE = Path(__file__).resolve().parents[1] / "compose"
COMMON = ("python3 -m sglang.launch_server --model-path /models/GLM-5.1 --tp-size ${SGLANG_GPU_COUNT:-8} "
          "--served-model-name glm-5.1 --reasoning-parser glm45 --tool-call-parser glm47 --host 0.0.0.0 "
          "--port 8000 --enable-metrics --enable-cache-report")
HICACHE = ("--enable-hierarchical-cache --hicache-size 200 --hicache-io-backend direct --hicache-mem-layout "
           "page_first --hicache-write-policy write_through --mem-fraction-static 0.85 --watchdog-timeout 1800")
MTP = ("--speculative-algorithm EAGLE --speculative-num-steps 3 --speculative-eagle-topk 1 "
       "--speculative-num-draft-tokens 4")
CACHES = ("deep_gemm", "triton", "flashinfer", "tvm-ffi", "sglang", "huggingface")


def _service(name: str) -> dict[str, Any]:
    raw = yaml.safe_load((COMPOSE / name).read_text())
    (service,) = raw["services"].values()
    return service


@pytest.mark.parametrize(("name", "extra", "container"), [
    ("compose-hicache.yaml", HICACHE, "sglang-glm-51-hicache-h200"),
    ("compose.yaml", MTP, "sglang-glm-51-h200"),
])
def test_gpu_profiles_follow_the_field_report(name: str, extra: str, container: str) -> None:
    service = _service(name)
    assert service["command"].split() == f"{COMMON} {extra}".split()
    assert service["image"] == "${SGLANG_IMAGE:-lmsysorg/sglang:latest}"
    assert service["container_name"] == f"${{SGLANG_CONTAINER_NAME:-{container}}}"
    assert service["init"] is True and service["stop_grace_period"] == "10m"
    assert service["runtime"] == "nvidia" and service["ipc"] == "host"
    assert service["shm_size"] == "${SGLANG_SHM_SIZE:-128g}"
    assert service["ports"] == ["${SGLANG_HOST_ADDRESS:-127.0.0.1}:${SGLANG_HOST_PORT:-30001}:8000"]
    assert service["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "${SGLANG_GPU_COUNT:-8}", "capabilities": ["gpu"]}
    volumes = service["volumes"]
    assert "${SGLANG_MODEL_DIR:-/models/GLM-5.1}:/models/GLM-5.1:ro" in volumes
    for cache in CACHES:
        assert any(volume.startswith(f"${{SGLANG_CACHE_DIR:-/var/cache/sglang}}/{cache}:") for volume in volumes)
    if name == "compose.yaml":
        assert service["restart"] == "unless-stopped"
        assert service["environment"]["SGLANG_ENABLE_SPEC_V2"] == "1"


def _defaults(text: str) -> str:
    """A compose value with each ${VAR:-default} at its default, as Compose resolves it unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


@pytest.mark.parametrize(("twin", "name"), [("sim-hicache", "compose-hicache.yaml"), ("sim-mtp", "compose.yaml")])
def test_a_twin_carries_exactly_its_compose_profiles_flags(twin: str, name: str) -> None:
    """Flag for flag, with no exception: what the simulator predicts is for the server the
    compose file starts (it listens on 127.0.0.1 and a free port whatever --host says)."""
    profile = load_registry(COMPOSE / "profiles.yaml").get(twin)
    service = _service(name)
    command = shlex.split(_defaults(service["command"]))
    assert command[:3] == ["python3", "-m", "sglang.launch_server"]
    assert list(profile.server_args) == command[3:]
    sglang_env = {k: str(v) for k, v in service["environment"].items() if k.startswith("SGLANG_")}
    assert dict(profile.env) == sglang_env


def test_a_what_if_is_its_twin_and_one_named_change() -> None:
    registry = load_registry(COMPOSE / "profiles.yaml")
    raw = yaml.safe_load((COMPOSE / "profiles.yaml").read_text())["profiles"]
    # A fleet's worker roles (sim-pd's prefill worker) extend a twin too, but stand for no server of their own.
    roles = {worker for spec in raw.values() for worker in spec.get("workers") or ()}
    what_ifs = {name: spec for name, spec in raw.items() if spec.get("extends") and name not in roles}
    assert set(what_ifs) == {"sim-hicache-mixed-chunk", "sim-hicache-mtp", "sim-hicache-400g", "sim-hicache-l3"}
    prefill = registry.get("sim-pd-prefill")
    assert list(prefill.server_args) == [*registry.get("sim-hicache").server_args, "--disaggregation-mode", "prefill"]
    for name, spec in what_ifs.items():
        twin = registry.get(spec["extends"])
        profile = registry.get(name)
        assert list(profile.server_args) == [*twin.server_args, *map(str, spec["extra_args"])]
        assert spec["description"].startswith("What-if")  # and it names the change: a flag or its value
        assert any(str(arg).lstrip("-") in spec["description"] for arg in spec["extra_args"][:2]), name


@pytest.mark.docker
def test_variables_reach_the_resolved_file() -> None:
    from pytest_glmperf.compose import find_compose

    try:
        compose = find_compose()
    except Exception as exc:
        if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
            raise
        pytest.skip(f"no Compose v2 here: {exc}")
    env = {**os.environ, "SGLANG_IMAGE": "lmsysorg/sglang:v0.5.15", "SGLANG_GPU_COUNT": "4",
           "SGLANG_HOST_PORT": "31001", "SGLANG_MODEL_DIR": "/data/glm"}
    done = subprocess.run([*compose, "-f", str(COMPOSE / "compose-hicache.yaml"), "config", "--format", "json"],
                          capture_output=True, text=True, env=env, check=True)
    service = json.loads(done.stdout)["services"]["sglang"]
    assert service["image"] == "lmsysorg/sglang:v0.5.15"
    assert service["command"][service["command"].index("--tp-size") + 1] == "4"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 4
    assert service["ports"][0]["published"] == "31001" and service["ports"][0]["target"] == 8000
    assert service["ports"][0]["host_ip"] == "127.0.0.1"  # loopback unless SGLANG_HOST_ADDRESS says otherwise
    assert any(v["source"] == "/data/glm" and v["read_only"] for v in service["volumes"])
    assert service["stop_grace_period"] == "10m0s" and service["init"] is True


@pytest.mark.parametrize("name", ["HF_TOKEN", "api_key", "--api-key", "OPENAI_API_KEY", "dbPassword",
                                  "AWS_SECRET_ACCESS_KEY", "Authorization", "GITHUB_TOKEN", "client_secret"])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["max_total_tokens", "tokenizer_path", "token_usage", "ssl_keyfile",
                                  "speculative_num_draft_tokens", "hicache_size", "model_path"])
def test_names_that_are_not_secrets(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_env_args_headers_and_nested_values() -> None:
    record = {
        "env": ["HF_TOKEN=hf_abc", "PATH=/bin"],
        "command": ["python3", "--api-key", "sk-1", "--port", "8000", "--admin-api-key=sk-2"],
        "headers": {"Authorization": "Bearer sk-3", "Accept": "*/*"},
        "server_info": {"api_key": "sk-4", "admin_api_key": None, "max_total_tokens": 1000, "note": "Basic Zm9v"},
        "compose_env": {"SGLANG_IMAGE": "lmsysorg/sglang:v0.5.15", "MY_PASSWORD": "pw"},
    }
    out = redact(record)
    text = json.dumps(out)
    for secret in ("hf_abc", "sk-1", "sk-2", "sk-3", "sk-4", "Zm9v", '"pw"'):
        assert secret not in text
    assert out["env"] == ["HF_TOKEN=***", "PATH=/bin"]
    assert out["command"] == ["python3", "--api-key", REDACTED, "--port", "8000", f"--admin-api-key={REDACTED}"]
    assert out["server_info"]["admin_api_key"] is None and out["server_info"]["max_total_tokens"] == 1000
    assert out["compose_env"]["SGLANG_IMAGE"] == "lmsysorg/sglang:v0.5.15"
    assert record["env"][0] == "HF_TOKEN=hf_abc", "redact() must not modify its input"


def test_gpu_count_falls_back_to_the_compose_reservation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert gpu_count(8) == {"count": 8, "source": "compose reservation"}
    assert gpu_count(None)["count"] == 0


def test_server_info_falls_back_to_get_server_info() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pytest_glmperf.provenance import fetch_server_info

    class OldSGLang(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/get_server_info":
                body = json.dumps({"version": "0.4.0", "api_key": "sk-old"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), OldSGLang)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint, info = fetch_server_info(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert endpoint == "/get_server_info" and info == {"version": "0.4.0", "api_key": "sk-old"}
    assert redact(info)["api_key"] == REDACTED
    assert fetch_server_info(f"http://127.0.0.1:{server.server_port}", timeout_s=1) == (None, None)
