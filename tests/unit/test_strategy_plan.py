"""adray plan: the inventory from a tiny synthetic manifest + labels table, the pure plan over it (the
issue's four categories, the bad inputs), rules from JSON, and the command (table + JSON out)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adray import schemas
from adray.cli import main
from adray.errors import ConfigError
from adray.strategy.inventory import CategoryInventory, Inventory, build_inventory
from adray.strategy.plan import plan_inventory, plan_table
from adray.strategy.rules import StrategyRules, load_rules


def _row(category: str, n: int, split: str, label: int | None, **extra) -> dict:
    uri = f"/data/{category}/{split}/{n:03d}.png"
    return {"item_id": f"{category}-{split}-{n:03d}", "uri": uri, "category": category, "split": split,
            "label": label, "defect_type": "good" if label == 0 else ("scratch" if label else None), **extra}  # fmt: skip


def _manifest_rows() -> list[dict]:
    rows = []
    rows += [_row("zeroshot", i, "test", None) for i in range(6)]  # a production line: test images only
    rows += [_row("kshot", i, "train", 0) for i in range(3)] + [
        _row("kshot", i, "test", None) for i in range(4)
    ]
    rows += [_row("bgad", i, "train", 0) for i in range(5)]
    rows += [
        _row("bgad", i, "test", 1, gt_mask_uri=f"/gt/bgad/{i}.png") for i in range(6)
    ]  # 6 from the manifest
    rows += [_row("bgad", i, "test", None) for i in range(6, 12)]  # 4 of these get labels with masks
    rows += [_row("m3dm", i, "train", 0, pc_uri=f"/data/m3dm/{i}.tiff") for i in range(3)]
    rows += [_row("m3dm", i, "test", None, pc_uri=f"/data/m3dm/t{i}.tiff") for i in range(4)]
    rows += [_row("nomasks", i, "train", 0) for i in range(3)]
    rows += [_row("nomasks", i, "test", 1) for i in range(12)]  # anomalies, none with a mask
    rows += [_row("somepc", i, "train", 0, pc_uri=f"/data/somepc/{i}.tiff") for i in range(3)]
    rows += [_row("somepc", i, "test", None) for i in range(3)]  # no point cloud here
    rows += [_row("empty", i, "test", None, skip_status="empty", skip_reason="zero bytes") for i in range(2)]
    return rows


def _write_manifest(path: Path, rows: list[dict]) -> str:
    schema = schemas.load_schema("manifest")
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    pq.write_table(table, path)
    return str(path)


def _write_labels(root: Path, rows: list[dict], name: str = "labels-20260101T000000000000Z-a") -> None:
    """A labels file as ``adray labels import`` stores it (schemas/labels), written directly."""
    schema = schemas.load_schema("labels")
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    full = [{"uri": f"/data/{r['item_id']}.png", "labelled_at": at, "imported_at": at, "import_id": name,
             "source_row": i + 1, **r} for i, r in enumerate(rows)]  # fmt: skip
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in full], schema=schema)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "labels" / f"{name}.parquet")


def _bgad_labels() -> list[dict]:
    return [{"item_id": f"bgad-test-{i:03d}", "label": "anomalous", "mask_uri": f"/gt/bgad/l{i}.png"}
            for i in range(6, 10)]  # fmt: skip


@pytest.fixture
def archive(tmp_path) -> tuple[str, Path]:
    manifest = _write_manifest(tmp_path / "manifest.parquet", _manifest_rows())
    root = tmp_path / "root"
    _write_labels(root, _bgad_labels())
    return manifest, root


def test_the_four_categories_of_the_issue_get_their_rung(archive):
    manifest, root = archive
    plan = plan_inventory(build_inventory(manifest, str(root)))
    got = {c.category: (c.strategy, c.detector) for c in plan.categories}
    assert got["zeroshot"] == ("zero-shot", "winclip")
    assert got["kshot"] == ("k-shot", "winclip")
    assert got["bgad"] == ("supervised", "bgad")
    assert got["m3dm"] == ("multimodal", "m3dm")
    bgad = plan.category("bgad")
    assert bgad.inventory["n_anomalies_with_masks"] == 10  # 6 from the manifest + 4 from the labels table
    assert "10 labelled anomalies with masks" in bgad.why
    assert plan.category("kshot").shots == 3 and plan.category("kshot").method == "WinCLIP+"
    assert plan.category("zeroshot").next_step == "1 more normal image(s) → WinCLIP+"
    assert plan.category("m3dm").next_step is None


def test_without_the_labels_table_the_bgad_category_stays_on_k_shot_and_says_what_is_missing(archive):
    manifest, _ = archive
    bgad = plan_inventory(build_inventory(manifest)).category("bgad")
    assert bgad.strategy == "k-shot"
    assert bgad.next_step == "4 more labelled anomalies with masks → BGAD"


def test_labels_move_the_zero_shot_category_up(archive):
    manifest, root = archive
    normals = [{"item_id": f"zeroshot-test-{i:03d}", "label": "normal"} for i in range(2)]
    _write_labels(root, normals, name="labels-20260102T000000000000Z-b")
    plan = plan_inventory(build_inventory(manifest, str(root)))
    zs = plan.category("zeroshot")
    assert (zs.strategy, zs.inventory["n_labelled_normals"], zs.shots) == ("k-shot", 2, 2)
    assert zs.next_step == "10 more labelled anomalies with masks → BGAD"


def test_bad_inputs_are_lines_in_the_plan_never_a_crash(archive):
    manifest, root = archive
    plan = plan_inventory(build_inventory(manifest, str(root)))
    nomasks = plan.category("nomasks")
    assert nomasks.strategy == "k-shot"
    assert nomasks.inventory["n_anomalies_without_masks"] == 12
    assert any("12 labelled anomalies have no defect mask: BGAD needs masks" in n for n in nomasks.notes)
    assert "not BGAD: needs 10 more labelled anomalies with masks" in nomasks.why
    somepc = plan.category("somepc")
    assert somepc.strategy == "k-shot"
    assert any("point clouds for only 3 of 6 items: stays image-only" in n for n in somepc.notes)
    assert "not M3DM: needs 3 more point cloud(s), one per item" in somepc.why
    empty = plan.category("empty")
    assert (empty.strategy, empty.detector) == ("none", "")
    assert empty.why == "empty category: no readable items (2 skipped by the catalog)"
    text = plan_table(plan)
    for c in plan.categories:
        assert f"{c.category}: {c.why}" in text
    assert "some (3/6)" in text and "empty category" in text


def test_a_label_without_mask_counts_apart_and_unknown_items_are_a_note():
    inv_manifest = pa.Table.from_pylist([_row("c", 0, "train", 0), _row("c", 1, "test", None)])
    labels = pa.table({"item_id": ["c-test-001", "elsewhere"], "label": ["anomalous", "normal"],
                       "mask_uri": [None, None]})  # fmt: skip
    from adray.strategy.inventory import inventory_from_tables

    inv = inventory_from_tables(inv_manifest, labels)
    c = inv.categories[0]
    assert (c.n_anomalies_with_masks, c.n_anomalies_without_masks, c.n_train_normals) == (0, 1, 1)
    assert inv.n_labels_unmatched == 1 and "1 labelled item(s) are not in this manifest" in inv.notes[0]


def test_the_manifest_label_wins_over_an_imported_one():
    # as in adray evaluate: labels fill only where the manifest has no label
    rows = [_row("c", 0, "train", 0, gt_mask_uri=None), _row("c", 1, "test", 1, gt_mask_uri="/m.png")]
    manifest = pa.Table.from_pylist(rows)
    labels = pa.table({"item_id": ["c-test-001"], "label": ["normal"], "mask_uri": [None]})
    from adray.strategy.inventory import inventory_from_tables

    c = inventory_from_tables(manifest, labels).categories[0]
    assert (c.n_anomalies_with_masks, c.n_labelled_normals) == (1, 0)


def test_rules_are_data_and_a_json_file_overrides_them(tmp_path, archive):
    manifest, _ = archive
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"min_anomalies_with_masks": 6}))
    rules = load_rules(str(path))
    assert rules.min_anomalies_with_masks == 6 and rules.min_normals_kshot == 1
    assert plan_inventory(build_inventory(manifest), rules).category("bgad").strategy == "supervised"
    no_m3dm = rules.replace(ladder=["supervised", "k-shot", "zero-shot"])
    assert plan_inventory(build_inventory(manifest), no_m3dm).category("m3dm").strategy == "k-shot"
    path.write_text(json.dumps({"min_anomalies": 3}))
    with pytest.raises(ConfigError, match="min_anomalies"):
        load_rules(str(path))
    with pytest.raises(ConfigError):
        StrategyRules(min_normals_kshot=0)


def test_plan_is_pure_over_counts():
    inv = Inventory("x", [CategoryInventory("a", n_items=20, n_train_normals=4, n_anomalies_with_masks=9,
                                            n_to_score=16)])  # fmt: skip
    a = plan_inventory(inv).category("a")
    assert (a.strategy, a.next_step) == ("k-shot", "1 more labelled anomalies with masks → BGAD")
    assert plan_inventory(Inventory("x", [])).notes == ["the input holds no category: nothing to plan"]


def test_plan_command_prints_the_table_and_writes_json(archive, tmp_path, capsys):
    manifest, root = archive
    out = tmp_path / "plan.json"
    assert main(["plan", "--input", manifest, "--output", str(root), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "category" in text.splitlines()[0] and "strategy" in text.splitlines()[0]
    assert "bgad: 10 labelled anomalies with masks" in text
    doc = json.loads(out.read_text())
    assert {c["category"]: c["strategy"] for c in doc["categories"]}["m3dm"] == "multimodal"
    assert doc["rules"]["min_anomalies_with_masks"] == 10
    stored = list((root / "plans").glob("plan-*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["categories"] == doc["categories"]


def test_plan_command_bad_rules_file_is_one_line_exit_2(archive, tmp_path, capsys):
    manifest, _ = archive
    bad = tmp_path / "rules.json"
    bad.write_text("[1, 2]")
    assert main(["plan", "--input", manifest, "--rules", str(bad)]) == 2
    assert "must hold a JSON object" in capsys.readouterr().err
