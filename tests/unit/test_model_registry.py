"""The model registry under a results root: round trip, no-op re-registration, best model by the ladder,
fitted-on-same-data, a missing artifact as a status (never a crash), the ``models`` view of adray query
and ``adray models list``."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from adray.cli import main
from adray.strategy.registry import (
    best_model,
    data_fingerprint,
    fitted_on_same_data,
    list_models,
    register_model,
    registration_url,
)

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _artifact(tmp_path: Path, name: str) -> str:
    folder = tmp_path / "artifacts" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # adray writes config.json last: its presence = complete
    return str(folder)


def _register(root, tmp_path, detector, version, *, minutes=0, category="bottle", ids=("a", "b"), **kw):
    uri = _artifact(tmp_path, f"{category}-{detector}-{version}")
    return register_model(str(root), category=category, detector=detector, version=version, uri=uri,
                          item_ids=list(ids), now=T0 + timedelta(minutes=minutes), **kw)  # fmt: skip


def test_round_trip(tmp_path):
    root = tmp_path / "root"
    rec, created = _register(root, tmp_path, "bgad", "v1", ids=["i2", "i1", "i2"],
                             counts={"normal": 1, "anomalous": 1}, validation={"image_auroc": 0.93, "bad": float("nan")})  # fmt: skip
    assert created
    url = registration_url(str(root), "bottle", "bgad", "v1")
    assert Path(url).is_file() and url == rec.registration
    doc = json.loads(Path(url).read_text())
    assert doc["item_ids"] == ["i1", "i2"] and doc["n_items"] == 2 and doc["strategy"] == "supervised"
    (got,) = list_models(str(root))
    assert got.status == "ok"
    assert (got.category, got.detector, got.version, got.uri) == ("bottle", "bgad", "v1", rec.uri)
    assert got.counts == {"normal": 1, "anomalous": 1}
    assert got.validation == {"image_auroc": 0.93, "bad": None}
    assert got.data_fingerprint == data_fingerprint(["i1", "i2"]) == data_fingerprint(["i2", "i1", "i1"])
    assert got.registered_at == T0.isoformat()


def test_registering_the_same_version_again_is_a_no_op(tmp_path):
    root = tmp_path / "root"
    first, _ = _register(root, tmp_path, "bgad", "v1")
    url = registration_url(str(root), "bottle", "bgad", "v1")
    before = Path(url).read_bytes()
    again, created = register_model(str(root), category="bottle", detector="bgad", version="v1",
                                    uri=first.uri, item_ids=["other"], now=T0 + timedelta(days=1))  # fmt: skip
    assert not created and again == first
    assert Path(url).read_bytes() == before
    assert len(list_models(str(root))) == 1


def test_best_model_follows_the_ladder_then_the_latest_registration(tmp_path):
    root = tmp_path / "root"
    assert best_model(str(root), "bottle") is None  # nothing registered: no crash
    _register(root, tmp_path, "bgad", "v1", minutes=0)
    _register(root, tmp_path, "winclip", "k4", minutes=5)  # later, but lower on the ladder
    assert best_model(str(root), "bottle").version == "v1"
    _register(root, tmp_path, "bgad", "v2", minutes=10)
    assert best_model(str(root), "bottle").version == "v2"
    _register(root, tmp_path, "m3dm", "m1", minutes=20)  # M3DM and BGAD share the top rung: latest wins
    assert best_model(str(root), "bottle").detector == "m3dm"
    _register(root, tmp_path, "winclip", "zs", minutes=30, category="cable", strategy="zero-shot")
    assert best_model(str(root), "cable").strategy == "zero-shot"
    assert [r.version for r in list_models(str(root), category="bottle")] == ["m1", "v2", "k4", "v1"]


def test_a_missing_artifact_is_a_status_and_never_wins(tmp_path, capsys):
    root = tmp_path / "root"
    old, _ = _register(root, tmp_path, "winclip", "k4", minutes=0)
    new, _ = _register(root, tmp_path, "bgad", "v1", minutes=5, ids=["x"])
    shutil.rmtree(new.uri)
    statuses = {r.version: r.status for r in list_models(str(root))}
    assert statuses == {"v1": "missing", "k4": "ok"}
    assert best_model(str(root), "bottle").version == "k4"
    assert not fitted_on_same_data(str(root), "bottle", "bgad", ["x"])  # refit: the artifact is gone
    shutil.rmtree(old.uri)
    assert best_model(str(root), "bottle") is None
    assert main(["models", "list", "--output", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count(" missing ") == 2 and "(2 registration(s), 2 not usable now)" in out


def test_fitted_on_same_data(tmp_path):
    root = tmp_path / "root"
    _register(root, tmp_path, "bgad", "v1", ids=["a", "b", "c"])
    assert fitted_on_same_data(str(root), "bottle", "bgad", ["c", "a", "b", "a"])
    assert not fitted_on_same_data(str(root), "bottle", "bgad", ["a", "b"])
    assert not fitted_on_same_data(str(root), "bottle", "m3dm", ["a", "b", "c"])
    assert not fitted_on_same_data(str(root), "cable", "bgad", ["a", "b", "c"])
    _register(root, tmp_path, "bgad", "v2", minutes=1, ids=["a", "b", "c", "d"])  # the latest counts
    assert fitted_on_same_data(str(root), "bottle", "bgad", ["a", "b", "c", "d"])
    assert not fitted_on_same_data(str(root), "bottle", "bgad", ["a", "b", "c"])


def test_odd_names_bad_records_and_bad_arguments(tmp_path):
    root = tmp_path / "root"
    rec, _ = _register(root, tmp_path, "bgad", "v1", category="../line 3/cap")
    assert Path(rec.registration).parent.parent == root / "models" / "registry"
    junk = root / "models" / "registry" / "junk.json"
    junk.write_text("{not json")
    assert [r.category for r in list_models(str(root))] == ["../line 3/cap"]  # the bad file is skipped
    with pytest.raises(ValueError, match="strategy"):
        register_model(str(root), category="c", detector="mine", version="1", uri=rec.uri, item_ids=[])
    with pytest.raises(ValueError, match="version"):
        register_model(str(root), category="c", detector="bgad", version="", uri=rec.uri, item_ids=[])
    with pytest.raises(ValueError, match="JSON"):
        register_model(str(root), category="c", detector="bgad", version="2", uri=rec.uri, item_ids=[],
                       validation={"curve": object()})  # fmt: skip


def test_models_view_in_adray_query(tmp_path, capsys):
    from adray.pipeline.query import connect

    root = tmp_path / "root"
    empty = connect(str(root)).execute("SELECT count(*) FROM models").fetchone()[0]
    assert empty == 0
    _register(root, tmp_path, "bgad", "v1", counts={"normal": 2}, validation={"image_auroc": 0.9})
    gone, _ = _register(root, tmp_path, "m3dm", "m1", minutes=1, category="cookie")
    shutil.rmtree(gone.uri)
    rows = (
        connect(str(root))
        .sql(
            "SELECT category, detector, strategy, status, n_items, json_extract(validation, '$.image_auroc') "
            "FROM models ORDER BY category"
        )
        .fetchall()
    )
    assert [r[:5] for r in rows] == [
        ("bottle", "bgad", "supervised", "ok", 2),
        ("cookie", "m3dm", "multimodal", "missing", 2),
    ]
    assert float(rows[0][5]) == pytest.approx(0.9)
    assert main(["query", "--output", str(root), "SELECT detector, status FROM models ORDER BY 1"]) == 0
    out = capsys.readouterr().out
    assert "bgad      ok" in out and "m3dm      missing" in out
