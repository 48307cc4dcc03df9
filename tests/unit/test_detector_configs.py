"""M3DM and WinCLIP settings as pydantic configs: the documents they write are exactly the ones the
dataclasses they replaced wrote (same keys, order, values, ints kept ints), so the content-hash versions
of artifacts do not change; bad values are one-line ConfigErrors (still ``ValueError``s).

``data/configs-dataclass-era.json`` holds the documents the dataclass configs wrote for the cases below
(recorded at commit 5272485 with the same constructor calls: ``to_dict()`` for M3DM, ``asdict`` for
WinCLIP). The committed WinCLIP 1.0 artifact still loading at its recorded version is checked in
``test_detector_contract.py`` (``test_a_winclip_artifact_written_before_headers_scores_as_it_did``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from adray.backbones.point_mae import PointMAEConfig
from adray.backbones.vit_features import ViTConfig
from adray.detectors.artifact import content_hash
from adray.detectors.m3dm.config import M3DMConfig, tiny_config
from adray.detectors.m3dm.fusion import FusionConfig
from adray.detectors.m3dm.preprocessing import PreprocessConfig
from adray.detectors.winclip.config import WinClipConfig
from adray.errors import ConfigError

BEFORE = json.loads((Path(__file__).parent / "data" / "configs-dataclass-era.json").read_text())


def _old_m3dm_doc() -> dict:
    doc = tiny_config("y").to_dict()
    doc["point"].pop("bn_stats")
    doc.pop("dlf_scale_quantile")
    doc.pop("dlf_pixel_rows")
    return json.loads(json.dumps(doc))


def _cases() -> dict[str, dict]:
    odd = tiny_config(
        "cable",
        mode="rgb",
        fusion=False,
        blur_sigma=4,
        dlf_nu=1,
        dlf_scale_quantile=1,
        coreset_ratio={"rgb": 1, "xyz": 0.5, "fused": 0.1},
        projection_dim=None,
        uff=FusionConfig(lr=1, temperature=1, mlp_ratio=2),
        preprocess=PreprocessConfig(plane_distance=1, removal_distance=2, dbscan_eps=3, units="mm"),
        point=PointMAEConfig(mlp_ratio=2, fetch_idx=(1, 2)),
        vit=ViTConfig(timm_kwargs={"img_size": 64, "drop": 0.5}),
    )
    winclip_odd = WinClipConfig(
        "metal_nut",
        scales=[2],
        temperature=1,
        defect_types=["scratch"],
        threshold=1,
        target_fpr=0,
        target_pixel_fpr=1,
        extra={"a": 1},
    )
    return {
        "m3dm_default": M3DMConfig("bottle").to_dict(),
        "m3dm_tiny": tiny_config("bottle").to_dict(),
        "m3dm_ints_in_float_fields": odd.to_dict(),
        "m3dm_with_dims": tiny_config("x").with_dims(7, 9).to_dict(),
        "m3dm_from_old_doc": M3DMConfig.from_dict(_old_m3dm_doc()).to_dict(),
        "m3dm_scaled_for_mm": PreprocessConfig(units="mm").scaled_for(None).to_dict(),
        "winclip_default": WinClipConfig(class_name="bottle").model_dump(),
        "winclip_ints_in_float_fields": winclip_odd.model_dump(),
    }


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_documents_and_versions_are_the_dataclass_ones(name):
    now = _cases()[name]
    assert json.dumps(now) == json.dumps(BEFORE[name])  # keys, order, values and int/float all alike
    assert content_hash(now, {}) == content_hash(BEFORE[name], {})


def test_m3dm_config_round_trips_is_frozen_and_pickles():
    cfg = tiny_config("cookie", mode="rgb", blur_sigma=3)
    doc = json.loads(json.dumps(cfg.to_dict()))
    assert M3DMConfig.from_dict(doc) == cfg and M3DMConfig.from_dict(doc).to_dict() == doc
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # shipped to Ray workers
    assert cfg.point.fetch_idx == (0, 1) and cfg.bank_names == ("rgb",) and cfg.map_sigma == 3 * 64 / 224
    with pytest.raises(Exception, match="frozen"):
        cfg.mode = "xyz"  # type: ignore[misc]
    changed = cfg.replace(uff=cfg.uff.replace(steps=5))
    assert changed.uff.steps == 5 and cfg.uff.steps == 60


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: M3DMConfig("c", mode="depth"), "unknown M3DM mode 'depth'"),
        (lambda: M3DMConfig("c", dlf_pixel_rows="some"), "dlf_pixel_rows must be foreground or all"),
        (lambda: M3DMConfig("c", img_sise=64), "img_sise: unknown setting"),
        (lambda: PointMAEConfig(bn_stats="train"), "bn_stats"),
        (lambda: PreprocessConfig(units="km"), "units"),
        (lambda: WinClipConfig("c", precision="fp8"), "precision must be one of"),
        (lambda: WinClipConfig("c", scales=()), "window scales must be positive"),
        (lambda: WinClipConfig("c", target_fpr=2), "target_fpr must lie in [0, 1]"),
    ],
)
def test_bad_values_are_one_line_config_errors(build, needle):
    with pytest.raises(ConfigError) as info:
        build()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert needle in str(info.value)


def test_winclip_config_keeps_runtime_settings_mutable():
    cfg = WinClipConfig("bottle", scales=["2", 3.0])
    assert cfg.scales == (2, 3) and cfg.temperature == 0.07
    cfg.max_tokens = 64  # tests and benchmarks bound the chunking of a built detector
    assert cfg.max_tokens == 64


def test_fit_bgad_flags_are_generated_from_the_config_fields():
    """fit-bgad's one-field flags take default, type and help from the BGAD config fields (the CLI contract
    test pins them unchanged): no flags give exactly the configs' defaults."""
    from adray.cli import build_parser
    from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig, configs_from_flags

    parser = build_parser("adray fit-bgad", "fit-bgad")
    args = parser.parse_args(["--train", "t", "--category", "bottle", "--output", "o"])
    assert configs_from_flags(args) == (BgadConfig(category="bottle"), BgadTrainConfig())
    actions = {a.dest: a for a in parser._actions}
    field = BgadTrainConfig.model_fields["meta_epochs"]
    assert (actions["epochs"].default, actions["epochs"].help) == (field.default, field.description)
    got = configs_from_flags(
        parser.parse_args([*"--train t --category c --output o".split(), "--lr", "1e-3"])
    )
    assert got[1].lr == 1e-3
