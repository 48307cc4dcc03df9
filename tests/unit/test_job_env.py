"""What travels with a job to its Ray workers, and local paths made absolute on the driver (no Ray here)."""

from __future__ import annotations

import json
import os

import pyarrow as pa

from adray import job_env, storage
from adray.catalog import item_id_for, normalise_manifest
from adray.pipeline.cluster import job_runtime_env, job_runtime_env_and_secrets
from adray.pipeline.spec import RAY_JOB_CONFIG_ENV, ScoreConfig


def test_driver_values_travel_and_unset_names_travel_empty(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    driver = {"ADRAY_S3_ENDPOINT": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "HF_HOME": "hf", "X": "1"}
    env = job_env.job_env_vars(driver)
    assert env["ADRAY_S3_ENDPOINT"] == "http://127.0.0.1:9" and env["AWS_ACCESS_KEY_ID"] == "k"
    assert env["HF_HOME"] == str(tmp_path / "hf")  # a worker's working directory is not the driver's
    assert env["AWS_SECRET_ACCESS_KEY"] == "" and env["AWS_PROFILE"] == "" and env["TORCH_HOME"] == ""
    assert "X" not in env
    assert set(env[job_env.MARKER].split(",")) == set(job_env.JOB_ENV_NAMES)


def test_worker_drops_the_empty_markers_and_keeps_its_other_settings() -> None:
    worker = {"AWS_PROFILE": "", "HF_HOME": "", "AWS_REGION": "eu-west-1", "OTHER": ""}
    worker[job_env.MARKER] = "AWS_PROFILE,HF_HOME,AWS_REGION"
    assert sorted(job_env.drop_unset_markers(worker)) == ["AWS_PROFILE", "HF_HOME"]
    assert worker == {"AWS_REGION": "eu-west-1", "OTHER": "", job_env.MARKER: "AWS_PROFILE,HF_HOME,AWS_REGION"}
    outside = {"HF_HOME": ""}  # no marker: not in a job, nothing changes
    assert job_env.drop_unset_markers(outside) == [] and outside == {"HF_HOME": ""}


def test_description_never_shows_secret_values() -> None:
    text = job_env.describe(job_env.job_env_vars({"AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_REGION": "r1"}))
    assert "s3cr3t" not in text and "AWS_SECRET_ACCESS_KEY=<set>" in text and "AWS_REGION=r1" in text


def test_runtime_env_leaves_names_that_ray_job_submit_already_sets(monkeypatch) -> None:
    submitted = {"runtime_env": {"env_vars": {"ADRAY_S3_ENDPOINT": "http://store:1"}, "working_dir": "."}}
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, json.dumps(submitted))
    env_vars = job_runtime_env({"ADRAY_S3_ENDPOINT": "http://store:1", "AWS_REGION": "r"})["env_vars"]
    assert "ADRAY_S3_ENDPOINT" not in env_vars  # Ray refuses a name set twice; the value came from there
    assert env_vars["AWS_REGION"] == "r"


def test_attached_job_runtime_env_carries_secret_names_as_a_key_only(monkeypatch) -> None:
    monkeypatch.delenv(RAY_JOB_CONFIG_ENV, raising=False)
    driver = {"AWS_ACCESS_KEY_ID": "AKID1", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_REGION": "r", "HF_HOME": ""}
    runtime_env, secrets = job_runtime_env_and_secrets(driver)
    env_vars = runtime_env["env_vars"]
    assert secrets == {"AWS_ACCESS_KEY_ID": "AKID1", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    assert "s3cr3t" not in json.dumps(runtime_env) and "AKID1" not in json.dumps(runtime_env)
    assert env_vars["AWS_REGION"] == "r" and env_vars["HF_HOME"] == ""
    assert env_vars["AWS_SESSION_TOKEN"] == ""  # unset secrets still travel as unset markers
    key = env_vars[job_env.SECRETS_MARKER]
    assert key.startswith(job_env.SECRETS_PREFIX)
    assert job_runtime_env_and_secrets(driver)[0]["env_vars"][job_env.SECRETS_MARKER] != key  # one per job
    plain, none = job_runtime_env_and_secrets({"AWS_REGION": "r"})
    assert none == {} and job_env.SECRETS_MARKER not in plain["env_vars"]


def test_worker_applies_the_job_secrets_from_the_key_value_store_once(monkeypatch) -> None:
    from ray.experimental import internal_kv

    store = {(job_env.SECRETS_PREFIX + "j1", "adray"): json.dumps({"AWS_SECRET_ACCESS_KEY": "s3cr3t"}).encode()}
    calls: list[str] = []

    def get(key, namespace=None):
        calls.append(key)
        return store.get((key, namespace))

    monkeypatch.setattr(internal_kv, "_internal_kv_initialized", lambda: True)
    monkeypatch.setattr(internal_kv, "_internal_kv_get", get)
    monkeypatch.setattr(job_env, "_applied_key", None)
    worker = {"AWS_SECRET_ACCESS_KEY": "cluster-starter", job_env.SECRETS_MARKER: job_env.SECRETS_PREFIX + "j1"}
    assert job_env.apply_job_secrets(worker) == ["AWS_SECRET_ACCESS_KEY"]
    assert worker["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert job_env.apply_job_secrets(worker) == [] and len(calls) == 1  # once per process
    other = {"AWS_SECRET_ACCESS_KEY": "theirs"}  # another job's worker: no marker, nothing fetched
    assert job_env.apply_job_secrets(other) == [] and other["AWS_SECRET_ACCESS_KEY"] == "theirs"
    missing = {job_env.SECRETS_MARKER: job_env.SECRETS_PREFIX + "gone"}
    assert job_env.apply_job_secrets(missing) == [] and list(missing) == [job_env.SECRETS_MARKER]
    foreign = {job_env.SECRETS_MARKER: "someone/else"}  # only adray's own keys are read
    assert job_env.apply_job_secrets(foreign) == [] and len(calls) == 2


def test_score_config_makes_local_paths_absolute_and_records_env_names_only(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = ScoreConfig(
        input="data/manifest.csv",
        output="file://out",
        detectors=["winclip", "models/bgad-bottle", "s3://b/m3dm"],
        weights="w/clip.safetensors",
        reference="~/refs",
        actor_env={"TOKEN": "s3cr3t"},
    ).validated()
    assert cfg.input == str(tmp_path / "data/manifest.csv") and cfg.output == str(tmp_path / "out")
    assert cfg.detectors == ["winclip", str(tmp_path / "models/bgad-bottle"), "s3://b/m3dm"]
    assert cfg.weights == str(tmp_path / "w/clip.safetensors")
    assert cfg.reference == os.path.expanduser("~/refs")
    record = cfg.to_json()
    assert record["actor_env"] == ["TOKEN"] and "s3cr3t" not in json.dumps(record)
    assert ScoreConfig(input="s3://b/in", output="s3://b/out", weights="random").validated().weights == "random"


def test_manifest_paths_are_absolute_from_the_reading_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    table = pa.table(
        {
            "uri": ["img/a.png", "s3://bucket/b.png"],
            "category": ["bottle", "bottle"],
            "pc_uri": ["xyz/a.tiff", None],
            "gt_mask_uri": ["gt/a.png", None],
        }
    )
    out = normalise_manifest(table).to_pydict()
    assert out["uri"] == [str(tmp_path / "img/a.png"), "s3://bucket/b.png"]
    assert out["pc_uri"] == [str(tmp_path / "xyz/a.tiff"), None]
    assert out["gt_mask_uri"] == [str(tmp_path / "gt/a.png"), None]
    assert out["item_id"][0] == item_id_for(str(tmp_path / "img/a.png"))
    assert storage.absolute_url("pretrained", keep=("pretrained",)) == "pretrained"


def test_secret_named_actor_env_is_split_from_the_runtime_env_part(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    secrets = {"AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "k", "HF_TOKEN": "t", "db_password": "p",
               "WANDB_API_KEY": "w", "AWS_SESSION_TOKEN": "st"}
    plain_given = {"AWS_REGION": "eu-west-1", "MALLOC_ARENA_MAX": "2"}
    config = ScoreConfig(input="m.parquet", output="out", detectors=["winclip"], actor_env={**secrets, **plain_given})
    plain, secret = job_env.split_secret_env(config.actor_env_vars())
    assert secret == secrets
    assert plain == {"OMP_WAIT_POLICY": "PASSIVE", **plain_given}


def test_describe_never_shows_a_secret_named_value():
    """Log lines name secret-looking variables as <set>: any name is_secret_name calls secret, not only AWS's."""
    from adray.job_env import describe

    line = describe({"HF_TOKEN": "hf-value-123", "DB_PASSWORD": "pw-456", "OMP_WAIT_POLICY": "PASSIVE"})
    assert "hf-value-123" not in line and "pw-456" not in line
    assert "HF_TOKEN=<set>" in line and "OMP_WAIT_POLICY=PASSIVE" in line
