"""Issue 15 item 6: several detectors in one run share one read and one decode of each item.

A real run on the session's Ray cluster with two detectors (``greymad``: RGB; ``greyxyz``: RGB + point
cloud) over items whose storage counts its reads (:mod:`tests.integration.counting_storage`). Before,
every image was read once per detector."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from adray import catalog, schemas
from adray.pipeline import ScoreConfig, score_archive

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import counting_storage as counting  # noqa: E402
from tests.integration import test_pipeline_support as sup  # noqa: E402

pytestmark = pytest.mark.integration
N = 5


def _rows(out: str) -> list[dict]:
    hive = pads.partitioning(pa.schema([("detector", pa.string()), ("date", pa.string())]), flavor="hive")
    table = pads.dataset(f"{out}/results", format="parquet", partitioning=hive).to_table()
    return table.select(schemas.load_schema("results").names).to_pylist()


def _config(manifest: str, out: str, detectors: list[str], run_id: str) -> ScoreConfig:
    return ScoreConfig(
        input=manifest,
        output=out,
        detectors=detectors,
        weights="random",
        plugins=[sup.PLUGIN, counting.PLUGIN],
        split="all",
        batch_size=4,
        rows_per_block=2,
        run_id=run_id,
    )


def test_a_two_detector_run_reads_and_decodes_each_item_once(tmp_path, ray_session):
    root = str(tmp_path)
    rows = sup.write_good_items(f"{root}/data", N, with_pc=True)
    rows[-1]["pc_uri"] = rows[-1]["pc_uri"].replace(".tiff", "-absent.tiff")  # only the 3D detector fails
    for r in rows:
        r["uri"], r["pc_uri"] = f"{counting.SCHEME}://{r['uri']}", f"{counting.SCHEME}://{r['pc_uri']}"
    manifest = f"{root}/manifest.parquet"
    catalog.write_manifest(sup.manifest_from_rows(rows), manifest)

    summary = score_archive(_config(manifest, f"{root}/out", ["greymad", "greyxyz"], "shared-1"))

    reads = counting.reads(root)
    images = [r["uri"].split("://", 1)[1] for r in rows]
    clouds = [r["pc_uri"].split("://", 1)[1] for r in rows[:-1]]
    assert {p: reads[p] for p in images} == {p: 1 for p in images}  # one read, not one per detector
    assert {p: reads[p] for p in clouds} == {p: 1 for p in clouds}
    assert sum(reads.values()) == len(images) + len(clouds)
    got = {(r["detector"], r["uri"].rsplit("/", 1)[1]): r["status"] for r in _rows(f"{root}/out")}
    names = [r["uri"].rsplit("/", 1)[1] for r in rows]
    assert got == {
        **{("greymad", n): "ok" for n in names},
        **{("greyxyz", n): "ok" for n in names[:-1]},
        ("greyxyz", names[-1]): "not_found",  # its point cloud is missing; greymad still scored the image
    }
    assert [(d.name, d.rows_in, d.rows_out) for d in summary.detectors] == [
        ("greymad", N, N),
        ("greyxyz", N, N),
    ]

    # the shared graph scores exactly as a run of the detector alone
    score_archive(_config(manifest, f"{root}/alone", ["greymad"], "alone-1"))
    alone = {r["item_id"]: r["image_score"] for r in _rows(f"{root}/alone")}
    shared = {r["item_id"]: r["image_score"] for r in _rows(f"{root}/out") if r["detector"] == "greymad"}
    assert shared == alone and len(alone) == N
