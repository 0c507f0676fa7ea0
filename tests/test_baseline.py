"""Saved baselines: layout on disk, loading by name or path, clear errors."""

import json
import shutil
import subprocess

import pytest

from pytest_glmperf.baseline import list_baselines, load_baseline, save_baseline, slug
from pytest_glmperf.errors import ConfigError
from pytest_glmperf.outputs import publish
from pytest_glmperf.records import RecordLog, RequestRecord
from tests.builders import level, run, target

IMAGE_TARGET = "hicache@lmsysorg/sglang:v0.5.3"


def finished_run(directory, targets=("sim-hicache", IMAGE_TARGET), records_per_target=3):
    """A run folder as the plugin leaves it: report.json (+ .md) and records.jsonl."""
    entries = [target(key, [level(1)], provenance={"kind": "compose", "image": {"reference": key.split("@", 1)[1]}}
                      if "@" in key else None) for key in targets]
    publish(directory, run(*entries))
    log = RecordLog(directory / "records.jsonl")
    for key in targets:
        for i in range(records_per_target):
            log.append(RequestRecord(request_id=f"{key}-{i}", profile=key, level=1, scenario="capacity",
                                     send_ns=0, first_token_ns=10, chunk_ns=[10, 20], chunk_tokens=[1, 1],
                                     done_ns=30, completion_tokens=2))
    log.close()
    return directory


def test_save_lays_out_name_profile_image(tmp_path):
    run = finished_run(tmp_path / "glmperf-report")
    store = tmp_path / ".glmperf"
    root = save_baseline(run, "prod", store)
    assert root == store / "prod"
    sim = store / "prod" / "sim-hicache" / "_"
    image = store / "prod" / "hicache" / "lmsysorg_sglang_v0.5.3"
    for folder in (sim, image):
        assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "records.jsonl", "report.json"]
    narrowed = json.loads((image / "report.json").read_text())
    assert list(narrowed["targets"]) == [IMAGE_TARGET]
    assert [json.loads(line)["profile"] for line in (image / "records.jsonl").read_text().splitlines()] == \
        [IMAGE_TARGET] * 3
    meta = json.loads((image / "meta.json").read_text())
    assert meta["name"] == "prod" and meta["target"] == IMAGE_TARGET
    assert meta["profile"] == "hicache" and meta["image"] == "lmsysorg/sglang:v0.5.3"
    assert meta["records"] == 3 and meta["report_status"] == "complete"
    assert {"saved_at", "host", "git_commit", "git_dirty", "plugin_version", "source"} <= set(meta)
    assert meta["plugin_version"]


def test_load_by_name_merges_every_target(tmp_path):
    store = tmp_path / "store"
    save_baseline(finished_run(tmp_path / "run"), "prod", store)
    baseline = load_baseline("prod", store)
    assert sorted(baseline.targets) == sorted(["sim-hicache", IMAGE_TARGET])
    assert len(baseline.records) == 6 and all(isinstance(r, RequestRecord) for r in baseline.records)
    assert {r.profile for r in baseline.records} == {"sim-hicache", IMAGE_TARGET}
    assert len(baseline.meta) == 2 and len(baseline.sources) == 2
    assert {t.key for t in baseline.report.targets if t.settings["thresholds"]} == {"sim-hicache", IMAGE_TARGET}


def test_load_by_path_to_a_run_folder_or_its_report(tmp_path):
    folder = finished_run(tmp_path / "run", targets=("sim-hicache",))
    for ref in (str(folder), str(folder / "report.json")):
        baseline = load_baseline(ref, tmp_path / "nowhere")
        assert baseline.targets == ["sim-hicache"] and len(baseline.records) == 3
    (folder / "records.jsonl").unlink()
    assert load_baseline(str(folder), tmp_path).records == []


def test_load_by_path_to_a_saved_baseline_folder(tmp_path):
    root = save_baseline(finished_run(tmp_path / "run"), "prod", tmp_path / "store")
    assert len(load_baseline(str(root), tmp_path / "elsewhere").targets) == 2


def test_unknown_ref_lists_saved_names(tmp_path):
    store = tmp_path / "store"
    save_baseline(finished_run(tmp_path / "run"), "prod", store)
    save_baseline(finished_run(tmp_path / "run"), "v0.5.2", store)
    with pytest.raises(ConfigError) as error:
        load_baseline("prdo", store)
    assert "'prdo'" in str(error.value) and "prod, v0.5.2" in str(error.value)
    with pytest.raises(ConfigError, match="none yet"):
        load_baseline("prod", tmp_path / "empty")


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "with space"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="folder name"):
        save_baseline(finished_run(tmp_path / "run"), name, tmp_path / "store")


def test_saving_needs_a_report(tmp_path):
    with pytest.raises(ConfigError, match="report-dir"):
        save_baseline(tmp_path / "no-run", "prod", tmp_path / "store")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        save_baseline(tmp_path / "bad", "prod", tmp_path / "store")


def test_saving_again_replaces_only_the_targets_measured(tmp_path):
    store = tmp_path / "store"
    save_baseline(finished_run(tmp_path / "both"), "prod", store)
    save_baseline(finished_run(tmp_path / "one", targets=("sim-hicache",), records_per_target=5), "prod", store)
    baseline = load_baseline("prod", store)
    assert sorted(baseline.targets) == sorted(["sim-hicache", IMAGE_TARGET])
    assert sum(r.profile == "sim-hicache" for r in baseline.records) == 5
    assert not [p for p in store.rglob(".*") if p.is_dir()], "no temporary folders left behind"


def test_torn_record_lines_are_dropped(tmp_path):
    folder = finished_run(tmp_path / "run", targets=("sim-hicache",))
    with (folder / "records.jsonl").open("a") as handle:
        handle.write('{"request_id": "torn", "prof')
    save_baseline(folder, "prod", tmp_path / "store")
    assert len(load_baseline("prod", tmp_path / "store").records) == 3


def test_list_baselines(tmp_path):
    store = tmp_path / "store"
    assert list_baselines(store) == []
    save_baseline(finished_run(tmp_path / "run"), "prod", store)
    saved = list_baselines(store)
    assert [(s.name, s.target, s.profile, s.image) for s in saved] == [
        ("prod", IMAGE_TARGET, "hicache", "lmsysorg/sglang:v0.5.3"), ("prod", "sim-hicache", "sim-hicache", None)]
    assert all(s.saved_at and s.path.is_dir() for s in saved)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_of_the_run_folder_is_recorded(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    save_baseline(finished_run(repo / "report", targets=("sim",)), "prod", tmp_path / "store")
    meta = json.loads((tmp_path / "store" / "prod" / "sim" / "_" / "meta.json").read_text())
    assert meta["git_commit"] == head and meta["git_dirty"] is False


def test_slug_keeps_image_names_readable():
    assert slug("lmsysorg/sglang:v0.5.3-cu129") == "lmsysorg_sglang_v0.5.3-cu129"
    assert slug("registry:5000/a/b@sha256:ab") == "registry_5000_a_b_sha256_ab"
    assert slug("///") == "_"
