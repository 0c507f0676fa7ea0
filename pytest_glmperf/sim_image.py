"""Build the images the ``sim`` compose profile runs, locally and without a registry.

Two images, each built only when missing or out of date:

``glmperf-base:bookworm``
    Debian 12 made by ``debootstrap --variant=minbase --include=python3,python3-venv`` and
    ``docker import``-ed (about 70 s; needs root and the Debian mirror, not a registry).
``glmperf-sim:latest``
    The base plus a virtual environment holding this package and its runtime dependencies,
    installed from wheels that pip downloads *here* (the build itself fetches nothing).
    Labelled ``ai.glmperf.source-hash``: a hash of the package sources, pyproject.toml,
    the Dockerfile and the base image id. A matching label means up to date.

Use from Python (``ensure_sim_image()``), or ``python3 -m pytest_glmperf.sim_image``.
Needs a source checkout (the repository root holding pyproject.toml).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import ServerStartError

__all__ = ["BASE_IMAGE", "SIM_IMAGE", "build_wheel", "ensure_base_image", "ensure_sim_image", "source_hash"]

BASE_IMAGE = "glmperf-base:bookworm"
SIM_IMAGE = "glmperf-sim:latest"
BASE_INCLUDE = ("python3", "python3-venv")
SOURCE_HASH_LABEL = "ai.glmperf.source-hash"
BASE_RECIPE_LABEL = "ai.glmperf.base-recipe"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

Progress = Callable[[str], None]


def repo_root() -> Path:
    """The source checkout this package was imported from (it holds pyproject.toml)."""
    for candidate in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (candidate / "pyproject.toml").is_file() and (candidate / "compose" / "sim-image").is_dir():
            return candidate
    raise ServerStartError(
        "building the simulator image needs a pytest-glmperf source checkout "
        "(pyproject.toml and compose/sim-image/ next to pytest_glmperf/); run from the repository root"
    )


def _docker():  # type: ignore[no-untyped-def]
    import docker  # imported lazily: the plugin imports without the SDK's engine

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise ServerStartError(f"no Docker engine answers ({exc}); start dockerd or run .ci/setup-docker.sh") from None
    return client


def _image_labels(client, ref: str) -> dict[str, str] | None:  # type: ignore[no-untyped-def]
    import docker.errors

    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    return dict(image.labels or {}) | {"__id__": image.id}


def base_recipe() -> str:
    return "debootstrap minbase bookworm include=" + ",".join(BASE_INCLUDE)


def _apt_mirror() -> str:
    """The Debian mirror apt already uses here, so debootstrap goes where apt goes."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split(":", 1)[1].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return DEFAULT_MIRROR


def ensure_base_image(*, force: bool = False, progress: Progress | None = None) -> str:
    """Make ``glmperf-base:bookworm`` unless it is present with the same recipe; return its id."""
    say = progress or (lambda _msg: None)
    client = _docker()
    labels = _image_labels(client, BASE_IMAGE)
    if labels and labels.get(BASE_RECIPE_LABEL) == base_recipe() and not force:
        say(f"{BASE_IMAGE} is up to date")
        return labels["__id__"]
    if shutil.which("debootstrap") is None:
        raise ServerStartError("debootstrap is missing: apt-get install -y debootstrap (or run .ci/setup-docker.sh)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="glmperf-base-") as tmp:
        root = Path(tmp) / "rootfs"
        mirror = os.environ.get("GLMPERF_DEBIAN_MIRROR") or _apt_mirror()
        say(f"debootstrap bookworm into {root} from {mirror} (about a minute)")
        command = ["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_INCLUDE),
                   "bookworm", str(root), mirror]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise ServerStartError(f"debootstrap failed (exit {done.returncode}):\n{tail}")
        say(f"docker import -> {BASE_IMAGE}")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        try:
            client.api.import_image_from_stream(
                tar.stdout, repository=BASE_IMAGE.split(":")[0], tag=BASE_IMAGE.split(":")[1],
                changes=[f'LABEL {BASE_RECIPE_LABEL}="{base_recipe()}"', 'CMD ["python3"]'],
            )
        finally:
            tar.stdout.close()
            tar.wait()
    image = client.images.get(BASE_IMAGE)
    say(f"{BASE_IMAGE} built in {time.monotonic() - started:.0f} s ({image.id[:19]})")
    return str(image.id)


WHEEL_SOURCES = ("pytest_glmperf", "perf_tests", "compose")  # pyproject.toml maps the last two into the package


def _source_files(root: Path) -> Iterable[Path]:
    yield root / "pyproject.toml"
    yield root / "README.md"
    for folder in WHEEL_SOURCES:
        for path in sorted((root / folder).rglob("*")):
            if "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}:
                continue
            yield path


def source_hash(root: Path, base_id: str) -> str:
    """Hash of everything that ends up in the simulator image."""
    digest = hashlib.sha256(base_id.encode())
    for path in _source_files(root):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def _source_copy(root: Path, dest: Path) -> Path:
    """The files a wheel is built from, copied out of the checkout."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).is_file():
            shutil.copy(root / name, dest / name)
    for folder in WHEEL_SOURCES:
        shutil.copytree(root / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


def build_wheel(dest: Path, root: Path | None = None) -> Path:
    """The pytest-glmperf wheel of a source checkout, built from a copy (the work tree stays clean)."""
    root = root or repo_root()
    with tempfile.TemporaryDirectory(prefix="glmperf-wheel-") as tmp:
        source = _source_copy(root, Path(tmp) / "source")
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(source), say=lambda _m: None)
    return max(dest.glob("pytest_glmperf-*.whl"), key=lambda p: p.stat().st_mtime)


def _python_tags(client, base: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(major.minor, machine) of the base image's python3, so pip fetches wheels that fit it."""
    out = client.containers.run(base, ["python3", "-c", "import platform,sys;"
                                       "print(f'{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}')"],
                                remove=True)
    version, machine = out.decode().split()
    return version, machine


def _pip(*args: str, say: Progress) -> None:
    command = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise ServerStartError(f"pip {args[0]} failed (exit {done.returncode}) while building {SIM_IMAGE}:\n{tail}")


def ensure_sim_image(*, tag: str = SIM_IMAGE, force: bool = False, progress: Progress | None = None) -> str:
    """Build the simulator image (and its base) when missing or stale; return the image id."""
    say = progress or (lambda _msg: None)
    root = repo_root()
    base_id = ensure_base_image(progress=progress)
    client = _docker()
    wanted = source_hash(root, base_id)
    labels = _image_labels(client, tag)
    if labels and labels.get(SOURCE_HASH_LABEL) == wanted and not force:
        say(f"{tag} is up to date ({wanted})")
        return labels["__id__"]
    started = time.monotonic()
    py_version, machine = _python_tags(client, BASE_IMAGE)
    with tempfile.TemporaryDirectory(prefix="glmperf-sim-ctx-") as tmp:
        context = Path(tmp)
        shutil.copy(root / "compose" / "sim-image" / "Dockerfile", context / "Dockerfile")
        wheels = context / "wheels"
        say(f"pip wheel {root} -> build context")
        ours = build_wheel(wheels, root)
        say(f"pip download runtime dependencies for python {py_version} {machine}")
        platforms = [f"manylinux{tag_}_{machine}" for tag_ in ("2014", "_2_17", "_2_28", "_2_31", "_2_34", "_2_35")]
        _pip("download", "--quiet", "--only-binary=:all:", "--dest", str(wheels),
             "--python-version", py_version, "--implementation", "cp",
             *[arg for platform_ in platforms for arg in ("--platform", platform_)],
             str(ours), say=say)
        say(f"docker build -> {tag}")
        log: list[str] = []
        try:
            for chunk in client.api.build(path=str(context), tag=tag, rm=True, forcerm=True, decode=True,
                                          buildargs={"BASE": BASE_IMAGE},
                                          labels={SOURCE_HASH_LABEL: wanted}):
                if "stream" in chunk:
                    log.extend(chunk["stream"].splitlines())
                if "error" in chunk:
                    raise ServerStartError(f"docker build of {tag} failed: {chunk['error']}\n" + "\n".join(log[-25:]))
        except ServerStartError:
            raise
        except Exception as exc:
            raise ServerStartError(f"docker build of {tag} failed: {exc}\n" + "\n".join(log[-25:])) from None
    image = client.images.get(tag)
    say(f"{tag} built in {time.monotonic() - started:.0f} s ({image.id[:19]}, {wanted})")
    _prune_dangling(client, say)
    return str(image.id)


def _prune_dangling(client, say: Progress) -> None:  # type: ignore[no-untyped-def]
    """Drop the previous simulator builds this one replaced (untagged, ours only)."""
    try:
        client.images.prune(filters={"dangling": True, "label": SOURCE_HASH_LABEL})
    except Exception as exc:  # pruning is housekeeping, never a reason to fail
        say(f"(could not prune old simulator images: {exc})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pytest_glmperf.sim_image", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--tag", default=SIM_IMAGE, help="simulator image tag. Default: %(default)s")
    parser.add_argument("--progress", action="store_true", help="print what is being done")
    parser.add_argument("--json", action="store_true", help="print {base, sim} image ids as JSON")
    args = parser.parse_args(argv)
    say = (lambda msg: print(f"[sim-image] {msg}", flush=True)) if args.progress else None
    try:
        sim_id = ensure_sim_image(tag=args.tag, force=args.force, progress=say)
    except ServerStartError as exc:
        print(f"sim-image: {exc}", file=sys.stderr)
        return 1
    if args.json:
        client = _docker()
        print(json.dumps({"base": client.images.get(BASE_IMAGE).id, "sim": sim_id}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

