"""A secret given with ``--actor-env`` reaches the scoring actor but none of Ray's files (logs, session dir).

Ray writes a task's or actor's ``runtime_env`` into its own logs (runtime-env agent, raylet, core worker), so
a secret-named variable travels as a constructor argument of the scoring actor instead. The ``envprobe``
detector below scores 1.0 when, at the moment it was built inside the actor, the variable held the value
whose SHA-256 it was given (the value itself is never in its options), else 0.0. Workers import this module
by name (``plugins=[PLUGIN]``), which registers the factory there too.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.dataset as pads
import pytest
import torch

from adray import catalog, storage
from adray.detectors.base import ScoreBatch, register_factory
from adray.pipeline import ScoreConfig, score_archive

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402

pytestmark = pytest.mark.integration
PLUGIN = "tests.integration.test_actor_secret_env"


class EnvProbe(sup.GreyMad):
    name: ClassVar[str] = "envprobe"

    def __init__(self, env_name: str = "", env_sha256: str = "", **kw: Any) -> None:
        super().__init__(**kw)
        value = os.environ.get(env_name)
        self.seen = value is not None and hashlib.sha256(value.encode()).hexdigest() == env_sha256
        self.config = {**self.config, "env_name": env_name, "env_sha256": env_sha256}

    def score(self, batch: dict[str, Any]) -> ScoreBatch:
        out = super().score(batch)
        return ScoreBatch(image_score=torch.full_like(out.image_score, float(self.seen)), anomaly_map=out.anomaly_map)


register_factory("envprobe", EnvProbe)


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                hits.append(str(path.relative_to(root)))
        except OSError:
            continue
    return hits


def test_secret_actor_env_reaches_the_actor_and_no_ray_file(tmp_path, ray_session):
    import ray

    secret = f"adray-secret-{uuid.uuid4().hex}"
    assert secret not in os.environ.values()
    archive, out = str(tmp_path / "archive"), str(tmp_path / "out")
    manifest = storage.join_url(archive, "manifest.parquet")
    catalog.write_manifest(sup.manifest_from_rows(sup.write_good_items(archive, 4)), manifest)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    config = ScoreConfig(
        input=manifest,
        output=out,
        detectors=["envprobe"],
        plugins=[PLUGIN],
        detector_options={"env_name": "ADRAY_PROBE_SECRET_KEY", "env_sha256": digest},
        actor_env={"ADRAY_PROBE_SECRET_KEY": secret, "ADRAY_PROBE_SETTING": "plain"},
        run_id="secret-env-1",
    )
    score_archive(config)

    table = pads.dataset(str(tmp_path / "out" / "results"), format="parquet", partitioning="hive").to_table()
    assert table["status"].to_pylist() == ["ok"] * 4
    assert table["image_score"].to_pylist() == [1.0] * 4  # the actor saw the secret's value
    assert _files_holding(tmp_path / "out", secret.encode()) == []
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert (session / "logs").is_dir()
    assert _files_holding(session, secret.encode()) == []
