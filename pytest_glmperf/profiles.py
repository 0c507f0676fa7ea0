"""Server profiles: which server to bring up and how, read from YAML registries.

The built-in registry ships inside the package (the repository's ``compose/``, installed as
``pytest_glmperf.builtin``); a project's own ``compose/profiles.yaml`` or ``--profiles-file``
layers over it by name. A profile is data only: starting a server from it is ``server.py``'s job.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PROFILE_KINDS = ("simulated", "compose", "router")
EXTERNAL = "external"  # a server someone else runs (--base-url); never declared in a registry
PROFILE_KEYS = ("kind", "description", "require_concurrency", "server_args", "env", "compose_file", "options",
                "extends", "extra_args", "router_args", "workers", "router_url", "router_metrics_url")
Entries = dict[str, tuple[Path, dict[str, Any]]]  # name -> (the file that declares it, its raw spec)
DEFAULT_REGISTRY = Path("compose") / "profiles.yaml"


def builtin_registry_path() -> Path:
    """The profiles.yaml shipped with the package (in a checkout: the repository's compose/)."""
    from . import builtin

    return Path(builtin.__file__).resolve().parent / "profiles.yaml"


@dataclass(frozen=True)
class ServerProfile:
    """One named server configuration.

    ``server_args`` are SGLang launch flags (the simulator parses the subset it models);
    ``options`` are plugin option defaults that apply while this profile runs.
    """

    name: str
    kind: str
    description: str = ""
    require_concurrency: int | None = None
    server_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    compose_file: Path | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the registry file that declared it
    # kind router: sglang-router's flags, and its workers (simulated profile names or URLs)
    router_args: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    scales: str | None = None  # --workers: the router profile this one resizes
    router_url: str | None = None          # a router someone else runs (its workers are asked for)
    router_metrics_url: str | None = None  # that router's Prometheus endpoint, if it has one

    @property
    def is_simulated(self) -> bool:
        return self.kind == "simulated"

    @property
    def is_external(self) -> bool:
        return self.kind == EXTERNAL

    @property
    def is_router(self) -> bool:
        return self.kind == "router"

    @property
    def is_someone_elses(self) -> bool:
        """A server (or router) this session attaches to and does not run: never flushed unasked."""
        return self.is_external or bool(self.router_url)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "require_concurrency": self.require_concurrency,
            "server_args": list(self.server_args),
            "compose_file": str(self.compose_file) if self.compose_file else None,
            "options": dict(self.options),
            **({"router_args": list(self.router_args), "workers": list(self.workers)} if self.is_router else {}),
        }


@dataclass(frozen=True)
class ProfileRegistry:
    """Every profile known to a session: the built-in ones and a project's, by name."""

    sources: tuple[Path, ...]
    profiles: Mapping[str, ServerProfile]

    def get(self, name: str) -> ServerProfile:
        try:
            return self.profiles[name]
        except KeyError:
            hint = difflib.get_close_matches(name, list(self.profiles), n=1)
            raise ConfigError(
                f"unknown profile {name!r} (--profile)" + (f", did you mean {hint[0]!r}?" if hint else "")
                + f"; known: {', '.join(sorted(self.profiles))} (from {', '.join(map(str, self.sources))})"
            ) from None

    def select(self, names: Iterable[str]) -> list[ServerProfile]:
        return [self.get(name) for name in names]

    def resized(self, profile: ServerProfile, workers: int) -> ServerProfile:
        """``profile`` (a regular router profile) with ``workers`` copies of its first worker."""
        from .fleet import disaggregation_mode
        from .scaling import scaled_name

        if not profile.is_router:
            raise ConfigError(f"--workers resizes router profiles; {profile.name!r} is {profile.kind}")
        if not profile.workers:
            raise ConfigError(f"--workers starts workers; {profile.name!r} attaches to a running router")
        first = profile.workers[0]
        if not first.startswith(("http://", "https://")) and \
                disaggregation_mode(self.get(first).server_args) != "null":
            raise ConfigError(f"--workers resizes regular fleets; {profile.name!r} is disaggregated "
                              "(declare each prefill/decode shape as its own profile)")
        if first.startswith(("http://", "https://")) and workers > 1:
            raise ConfigError(f"--workers starts copies of a simulated worker; {profile.name!r} has a URL")
        return replace(profile, name=scaled_name(profile.name, workers), workers=(first,) * workers,
                       scales=profile.name)

    def layered(self, over: ProfileRegistry) -> ProfileRegistry:
        """This registry with ``over``'s profiles added, replacing those of the same name."""
        return ProfileRegistry(sources=(*self.sources, *over.sources), profiles={**self.profiles, **over.profiles})


def load_profiles(project: Path | None) -> ProfileRegistry:
    """The built-in profiles, with a project's registry (if any) layered over them by name; a
    project's profile may extend a built-in one."""
    builtin = builtin_registry_path().resolve()
    entries, sources = _entries(builtin), [builtin]
    if project is not None and project.resolve() != builtin:
        entries.update(_entries(project))
        sources.append(project.resolve())
    return _build(entries, tuple(sources))


def external_profile(name: str, url: str, like: ServerProfile | None = None) -> ServerProfile:
    """A server this session does not run, named from itself; ``like`` (a --profile given
    beside --base-url) lends its required concurrency and option defaults, not its name."""
    return ServerProfile(
        name=name, kind=EXTERNAL, description=f"already running at {url} (--base-url)",
        require_concurrency=like.require_concurrency if like else None,
        options=dict(like.options) if like else {}, source=like.source if like else None)


def load_registry(path: Path) -> ProfileRegistry:
    """Read and validate one registry file; every error names the file and the profile."""
    return _build(_entries(path), (path.resolve(),))


def _entries(path: Path) -> Entries:
    if not path.is_file():
        raise ConfigError(f"profile registry not found: {path} (set --profiles-file)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile registry {path} is not valid YAML: {exc}") from None
    entries = raw.get("profiles") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"profile registry {path} needs a non-empty 'profiles:' mapping")
    return {str(name): (path.resolve(), spec) for name, spec in entries.items()}


def _build(entries: Entries, sources: tuple[Path, ...]) -> ProfileRegistry:
    profiles = {name: _parse_profile(path, name, _resolved(entries, name)) for name, (path, _) in entries.items()}
    for profile in profiles.values():
        _check_workers(profile, profiles)
    return ProfileRegistry(sources=sources, profiles=profiles)


def _check_workers(profile: ServerProfile, profiles: Mapping[str, ServerProfile]) -> None:
    """A router's workers are simulated profiles of this registry or URLs of running servers."""
    if not profile.is_router:
        return
    where = f"profile {profile.name!r} in {profile.source}"
    for name in profile.workers:
        if name.startswith(("http://", "https://")):
            continue
        worker = profiles.get(name)
        if worker is None or not worker.is_simulated:
            simulated = ", ".join(sorted(n for n, p in profiles.items() if p.is_simulated))
            raise ConfigError(f"{where}: worker {name!r} is not a simulated profile or an http(s) URL; "
                              f"simulated profiles: {simulated}")


def _resolved(entries: Entries, name: str, chain: tuple[str, ...] = ()) -> Any:
    """A spec with its ``extends:`` applied: the base's keys, this profile's on top, and its
    ``extra_args`` after the base's flags (a repeated flag: the last one counts, as in SGLang)."""
    path, spec = entries[name]
    if not isinstance(spec, dict) or spec.get("extends") is None:
        return spec
    where, base = f"profile {name!r} in {path}", str(spec["extends"])
    if base not in entries or base in (*chain, name):
        raise ConfigError(f"{where}: extends {base!r}, which is " + ("part of a cycle" if base in entries
                          else f"not a profile; known: {', '.join(sorted(entries))}"))
    if not isinstance(spec.get("extra_args", []), list):
        raise ConfigError(f"{where}: extra_args must be a list of flags")
    inherited = dict(_resolved(entries, base, (*chain, name)))
    base_path = entries[base][0]
    if inherited.get("compose_file"):  # relative to the file that declared it
        inherited["compose_file"] = str(base_path.parent / inherited["compose_file"])
    merged = {**inherited, **{k: v for k, v in spec.items() if k not in ("extends", "extra_args")}}
    merged["server_args"] = [*merged.get("server_args", []), *spec.get("extra_args", [])]
    merged["env"] = {**(inherited.get("env") or {}), **(spec.get("env") or {})}
    return merged


def _parse_profile(path: Path, name: str, spec: Any) -> ServerProfile:
    where = f"profile {name!r} in {path}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(map(str, spec)) - set(PROFILE_KEYS))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], PROFILE_KEYS, n=1)
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; a profile takes {', '.join(PROFILE_KEYS)}")
    if "extra_args" in spec:
        raise ConfigError(f"{where}: extra_args adds flags to the profile it extends: give 'extends' too")
    for key, kind_of, what in (("server_args", list, "a list of flags"), ("env", dict, "a mapping"),
                               ("options", dict, "a mapping of option: value"),
                               ("router_args", list, "a list of sglang-router flags"),
                               ("workers", list, "a list of simulated profile names or URLs")):
        if spec.get(key) is not None and not isinstance(spec[key], kind_of):
            raise ConfigError(f"{where}: {key} must be {what}, not {type(spec[key]).__name__}")
    kind = spec.get("kind")
    if kind not in PROFILE_KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(PROFILE_KINDS)}, not {kind!r}")
    compose_file = spec.get("compose_file")
    if kind == "compose" and not compose_file:
        raise ConfigError(f"{where}: a compose profile needs 'compose_file'")
    if kind == "router" and bool(spec.get("workers")) == bool(spec.get("router_url")):
        raise ConfigError(f"{where}: a router profile needs 'workers' (the session starts the router) or "
                          "'router_url' (a router already running), not both")
    if kind != "router" and any(spec.get(key) for key in ("workers", "router_args", "router_url")):
        raise ConfigError(f"{where}: 'workers', 'router_args' and 'router_url' belong to a router profile "
                          "(kind: router)")
    require = spec.get("require_concurrency")
    if require is not None and (not isinstance(require, int) or require < 1):
        raise ConfigError(f"{where}: require_concurrency must be a positive integer")
    return ServerProfile(
        name=name,
        kind=kind,
        description=str(spec.get("description", "")).strip(),
        require_concurrency=require,
        server_args=tuple(str(arg) for arg in spec.get("server_args", ())),
        env={str(k): str(v) for k, v in (spec.get("env") or {}).items()},
        compose_file=(path.parent / compose_file) if compose_file else None,
        options=dict(spec.get("options") or {}),
        source=path,
        router_args=tuple(str(arg) for arg in spec.get("router_args", ())),
        workers=tuple(str(worker) for worker in spec.get("workers", ())),
        router_url=str(spec["router_url"]).rstrip("/") if spec.get("router_url") else None,
        router_metrics_url=str(spec["router_metrics_url"]) if spec.get("router_metrics_url") else None,
    )
