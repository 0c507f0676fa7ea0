"""Where a measurement came from: image, compose file, server version and arguments, host.

Every report carries this record, so two runs can be told apart after the fact (``latest``
is a moving tag: the image id and repo digest say which build it really was). Secrets never
reach a report: everything goes through ``redact()``.

Sources: the server's own ``GET /server_info`` (``/get_server_info`` on old
images) gives ``version`` and every server argument; ``docker inspect`` gives the image id,
repo digests and the ``ai.sglang.build.commit`` label (or the ``SGLANG_BUILD_COMMIT`` env of
newer images), which are not exposed over HTTP.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

__all__ = [
    "REDACTED",
    "collect_compose_provenance",
    "fetch_server_info",
    "file_sha256",
    "gpu_count",
    "image_id",
    "image_provenance",
    "image_reference",
    "is_secret_name",
    "redact",
    "redact_command",
    "redact_url",
    "server_version",
]

REDACTED = "***"
SECRET_WORDS = frozenset({"KEY", "APIKEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS"})
SECRET_LAST_WORDS = frozenset({"TOKEN"})  # HF_TOKEN, access_token; not token_usage, token_capacity
BUILD_COMMIT_LABEL = "ai.sglang.build.commit"
IMAGE_LABELS_KEPT = (
    BUILD_COMMIT_LABEL,
    "ai.sglang.image.tag",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.version",
)
IMAGE_ENV_KEPT = ("SGLANG_BUILD_COMMIT", "SGLANG_BUILD_URL", "SGLANG_IMAGE_TAG")

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
_AUTH_VALUE = re.compile(r"^(Bearer|Basic|Token)\s+\S+", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """True for names like ``HF_TOKEN``, ``api_key``, ``--api-key``, ``dbPassword``, ``Authorization``.

    Matching is on whole words of the name (split at ``_ - .`` and camelCase): KEY, SECRET,
    PASSWORD anywhere, TOKEN as the last word. A plain substring test would also hide the
    server's ``max_total_tokens``, ``tokenizer_path`` or ``token_usage``, which reports need.
    """
    words = [word.upper() for word in _WORD_SPLIT.split(name) if word]
    if not words:
        return False
    return (bool(set(words) & SECRET_WORDS) or words[-1] in SECRET_LAST_WORDS
            or name.strip("-").lower() in {"authorization", "proxy-authorization"})


def redact(value: Any, *, name: str | None = None) -> Any:
    """A copy of ``value`` with secrets replaced by ``"***"``; safe on any JSON-like data.

    - mapping entries whose key is a secret name (``is_secret_name``) or ``Authorization``;
    - command lines: ``--api-key X`` and ``--api-key=X``;
    - env lists: ``HF_TOKEN=X``;
    - any ``Bearer …`` / ``Basic …`` / ``Token …`` string.
    Empty and ``None`` values are kept, so "no key set" stays visible.
    """
    if name is not None and is_secret_name(name) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, Mapping):
        return {key: redact(item, name=str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return _redact_sequence(list(value))
    if isinstance(value, str):
        return _redact_string(value)
    return value


def _redact_string(text: str) -> str:
    if _AUTH_VALUE.match(text.strip()):
        return text.strip().split()[0] + " " + REDACTED
    flag, eq, rest = text.partition("=")
    if eq and rest and " " not in flag and is_secret_name(flag):
        return f"{flag}={REDACTED}"
    return text


def _redact_sequence(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    hide_next = False
    for item in items:
        if hide_next and isinstance(item, str) and not item.startswith("--"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if isinstance(item, str) and item.startswith("-") and "=" not in item and is_secret_name(item):
            hide_next = True
            out.append(item)
            continue
        out.append(redact(item))
    return out


def redact_url(url: str) -> str:
    """``url`` without credentials: ``user:pass@`` and every query value become ``***``.

    A ``--base-url`` may carry a password or an API key in its query; reports and logs get
    this form, the client keeps the original.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{name}={REDACTED}" if sep else name
                     for name, sep, _ in (item.partition("=") for item in parts.query.split("&") if item))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_command(argv: Sequence[str]) -> list[str]:
    """A command line as reports may show it: secret options hidden (``redact``) and every URL
    without its credentials (``--base-url=http://user:pw@host`` -> ``http://***@host``)."""
    out = []
    for arg in redact(list(argv)):
        flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        out.append(f"{flag}{eq}{redact_url(value)}" if "://" in value else arg)
    return out


def server_name(url: str, info: Mapping[str, Any] | None) -> str:
    """What a running server calls itself: ``<served model>@<version>`` from ``/server_info``,
    else its address (``url_name``)."""
    info = info or {}
    model = info.get("served_model_name") or Path(str(info.get("model_path") or "")).name
    version = info.get("version")
    if not model or not version:
        return url_name(url)
    return _id_safe(f"{model}@{version}")


def url_name(url: str) -> str:
    """``host:port`` of a URL (no credentials), as a name a test id can carry."""
    return _id_safe(urlsplit(url).netloc.rsplit("@", 1)[-1] + urlsplit(url).path.rstrip("/"))


def _id_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._:@+/-]", "_", text)


# -- reading a provenance record back (every kind of server writes its own shape) -------------

def image_reference(provenance: Mapping[str, Any] | None) -> str | None:
    """The image a server ran (``lmsysorg/sglang:v0.5.12``); None for a simulator or a URL."""
    image = (provenance or {}).get("image")
    if isinstance(image, Mapping):
        return image.get("reference")
    return image if isinstance(image, str) else None


def image_id(provenance: Mapping[str, Any] | None) -> str | None:
    """The image's content id (``sha256:…``): what a moving tag really pointed at."""
    image = (provenance or {}).get("image")
    if isinstance(image, Mapping) and image.get("id"):
        return str(image["id"])
    return (provenance or {}).get("image_id")


def server_version(provenance: Mapping[str, Any] | None) -> str | None:
    """The server's own version (``/server_info``), whichever record shape holds it."""
    record = provenance or {}
    return record.get("version") or record.get("server_version") or (record.get("server_info") or {}).get("version")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fetch_server_info(base_url: str, *, timeout_s: float = 10.0,
                      headers: Mapping[str, str] | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """``(endpoint, json)`` from ``/server_info``, else ``/get_server_info``; ``(None, None)`` if neither."""
    with httpx.Client(timeout=timeout_s, headers=dict(headers or {})) as http:
        for path in ("/server_info", "/get_server_info"):
            try:
                response = http.get(base_url.rstrip("/") + path)
                if response.status_code == 200:
                    body = response.json()
                    if isinstance(body, dict):
                        return path, body
            except (httpx.HTTPError, ValueError):
                continue
    return None, None


def gpu_count(reserved: int | str | None = None) -> dict[str, Any]:
    """GPUs on this host from ``nvidia-smi -L``, else what the compose file reserves."""
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
            if done.returncode == 0:
                count = sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))
                return {"count": count, "source": "nvidia-smi"}
        except (OSError, subprocess.TimeoutExpired):
            pass
    if reserved is not None:
        return {"count": reserved, "source": "compose reservation"}
    return {"count": 0, "source": "none (no nvidia-smi, no GPU reservation)"}


def image_provenance(client: Any, reference: str) -> dict[str, Any]:
    """Image id, repo digests and build labels of a local image (Docker SDK ``client``)."""
    record: dict[str, Any] = {"reference": reference, "id": None, "repo_digests": [], "build_commit": None}
    try:
        image = client.images.get(reference)
    except Exception as exc:  # not found, engine gone: the record says so instead of failing the run
        record["error"] = f"{type(exc).__name__}: {exc}"
        return record
    attrs = image.attrs or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    env = dict(item.split("=", 1) for item in (attrs.get("Config") or {}).get("Env") or [] if "=" in item)
    record.update(
        id=image.id,
        repo_digests=list(attrs.get("RepoDigests") or []),
        tags=list(image.tags or []),
        created=attrs.get("Created"),
        labels={key: labels[key] for key in IMAGE_LABELS_KEPT if key in labels},
        env={key: env[key] for key in IMAGE_ENV_KEPT if key in env},
        build_commit=labels.get(BUILD_COMMIT_LABEL) or env.get("SGLANG_BUILD_COMMIT"),
    )
    return redact(record)


def collect_compose_provenance(
    *,
    profile: str,
    compose_file: Path,
    project: str,
    image_reference: str,
    docker_client: Any,
    base_url: str,
    started_at: str | None,
    startup_s: float | None,
    env_overrides: Mapping[str, str],
    gpu_reserved: int | str | None,
    container: Mapping[str, Any] | None = None,
    server_info: tuple[str | None, dict[str, Any] | None] | None = None,
    reused: bool = False,
) -> dict[str, Any]:
    """The provenance record of a compose-managed server (JSON-ready, secrets redacted)."""
    endpoint, info = server_info if server_info is not None else fetch_server_info(base_url)
    record: dict[str, Any] = {
        "kind": "compose",
        "profile": profile,
        "compose_file": str(compose_file),
        "compose_file_sha256": file_sha256(compose_file),
        "compose_project": project,
        "compose_env": dict(env_overrides),
        "image": image_provenance(docker_client, image_reference),
        "container": dict(container or {}),
        "base_url": base_url,
        "server_info_endpoint": endpoint,
        "server_version": (info or {}).get("version"),
        "server_info": info,
        "host": socket.gethostname(),
        "gpus": gpu_count(gpu_reserved),
        "started_at": started_at,
        "startup_s": None if startup_s is None else round(startup_s, 3),
        "reused_running_server": reused,
    }
    return redact(record)
