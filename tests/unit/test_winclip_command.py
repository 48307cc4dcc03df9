"""`adray winclip --masks DIR FOLDER` on an MVTec-style folder: one map per image mirroring its relative path,
maps.jsonl pointing each image at its own map; an unreadable image is named and skipped, the others scored,
and the command exits 2 at the end."""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from adray.cli import main
from adray.commands.winclip import map_names
from adray.io.masks import decode_map_png16

ARGS = ["--class-name", "bottle", "--weights", "random", "--model", "adray-tiny-clip", "--device", "cpu"]


def _png(path, rng, size=(40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_mvtec_style_folder_gives_one_map_per_image_and_names_the_unreadable_one(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "test"
    for defect in ("good", "crack", "scratch"):
        for i in range(8):
            _png(folder / defect / f"{i:03d}.png", rng)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (folder / "crack" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    masks = tmp_path / "maps"

    rc = main(["winclip", *ARGS, "--batch-size", "5", "--masks", str(masks), str(folder)])

    out, err = capsys.readouterr()
    assert rc == 2
    scored = [line.split("\t")[0] for line in out.splitlines()]
    assert len(scored) == 24 and len(set(scored)) == 24
    assert str(folder / "crack" / "truncated.jpg") not in scored
    errors = [line for line in err.splitlines() if line.startswith("adray winclip: error: ")]
    assert errors[0].startswith(f"adray winclip: error: cannot read {folder / 'crack' / 'truncated.jpg'}: ")
    assert "1 of 25 images could not be read" in errors[-1] and "Traceback" not in err
    index = [json.loads(line) for line in (masks / "maps.jsonl").read_text().splitlines()]
    assert len(index) == 24 and len({e["map"] for e in index}) == 24
    for entry in index:
        rel = os.path.relpath(entry["image"], folder)
        assert entry["map"] == os.path.splitext(rel)[0] + ".png"  # good/000.png, crack/000.png, ...
        amap = decode_map_png16((masks / entry["map"]).read_bytes(), entry["map_min"], entry["map_max"])
        assert amap.shape == (40, 48)
    pngs = sorted(p.relative_to(masks).as_posix() for p in masks.rglob("*.png"))
    assert len(pngs) == 24 and "crack/000.png" in pngs and "good/000.png" in pngs


def test_a_rerun_rewrites_maps_jsonl_instead_of_appending(tmp_path, capsys):
    rng = np.random.default_rng(1)
    _png(tmp_path / "in" / "a.png", rng)
    for _ in range(2):
        assert main(["winclip", *ARGS, "--masks", str(tmp_path / "m"), str(tmp_path / "in")]) == 0
    assert len((tmp_path / "m" / "maps.jsonl").read_text().splitlines()) == 1


def test_map_names_mirror_paths_and_keep_same_stem_images_apart(tmp_path):
    for rel in ("good/0.png", "good/0.jpg", "crack/0.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    images = [str(tmp_path / r) for r in ("good/0.png", "good/0.jpg", "crack/0.png")]
    assert map_names(images, [str(tmp_path)]) == {
        images[0]: "good/0.png.png",
        images[1]: "good/0.jpg.png",
        images[2]: "crack/0.png",
    }
    # two folders given: paths relative to their common folder, so both stay apart
    assert map_names([images[0], images[2]], [str(tmp_path / "good"), str(tmp_path / "crack")]) == {
        images[0]: "good/0.png",
        images[2]: "crack/0.png",
    }


def test_a_missing_path_is_one_line_with_status_2(tmp_path, capsys):
    assert main(["winclip", *ARGS, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"adray winclip: error: {tmp_path / 'nope'} is neither a file nor a folder"
