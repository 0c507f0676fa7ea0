#!/usr/bin/env bash
# Undo .ci/setup-docker.sh and clean up after the compose tests; safe to run more than once.
#
#   - removes containers, networks and volumes of compose projects named glmperf-* (what
#     pytest-glmperf starts) and the tests' stand-in containers glmperf-stranger-*;
#   - stops dockerd only if setup-docker.sh started it (pid in $GLMPERF_CI_STATE/dockerd.pid,
#     checked to still be a dockerd), never an engine that was already running;
#   - keeps the images (a warm build cache) unless GLMPERF_CI_REMOVE_IMAGES=1.
set -uo pipefail

state="${GLMPERF_CI_STATE:-/tmp/glmperf-ci}"
pidfile="$state/dockerd.pid"
log() { printf '[teardown-docker] %s\n' "$*"; }

if docker info >/dev/null 2>&1; then
  projects=$(docker ps -a --filter label=com.docker.compose.project \
               --format '{{.Label "com.docker.compose.project"}}' | grep '^glmperf-' | sort -u || true)
  networks=$(docker network ls --filter label=com.docker.compose.project \
               --format '{{.Label "com.docker.compose.project"}} {{.ID}}' | awk '$1 ~ /^glmperf-/ {print $2}')
  for project in $projects; do
    log "removing leftover compose project $project"
    ids=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
    [ -n "$ids" ] && docker rm -f -v $ids >/dev/null
  done
  strangers=$(docker ps -aq --filter name=glmperf-stranger-)
  [ -n "$strangers" ] && docker rm -f -v $strangers >/dev/null
  for network in $networks; do docker network rm "$network" >/dev/null 2>&1 || true; done
  volumes=$(docker volume ls --filter label=com.docker.compose.project \
              --format '{{.Label "com.docker.compose.project"}} {{.Name}}' | awk '$1 ~ /^glmperf-/ {print $2}')
  for volume in $volumes; do docker volume rm -f "$volume" >/dev/null 2>&1 || true; done
  if [ "${GLMPERF_CI_REMOVE_IMAGES:-0}" = 1 ]; then
    docker image rm -f glmperf-sim:latest glmperf-base:bookworm >/dev/null 2>&1 || true
  fi
fi

if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    log "stopping dockerd (pid $pid), which setup-docker.sh started"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "dockerd did not stop in 30 s; killing it"; kill -KILL "$pid"; }
  fi
  rm -f "$pidfile"
fi
exit 0
