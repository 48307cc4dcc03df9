"""The detector commands' flags state each default once, on a config field (issue 15).

``adray build-m3dm``, ``adray fit-bgad`` and ``adray winclip``: with no optional flag the configs they build
are exactly the configs' defaults; every generated flag names the field its default lives in
(``action.config_field``) and takes default and help from it, so a changed default shows up in the flag.
The CLI contract test pins the flags themselves unchanged.
"""

from __future__ import annotations

import inspect

import pytest

from adray.backbones.vit_features import ViTConfig
from adray.cli import build_parser, main
from adray.commands.build_m3dm import config_from_args, options_from_args
from adray.commands.winclip import WinClipCommandOptions
from adray.config import flag_of, flag_values
from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig, configs_from_flags
from adray.detectors.bgad.losses import LossConfig
from adray.detectors.m3dm.config import M3DMConfig, tiny_config
from adray.detectors.winclip.config import WinClipConfig
from adray.errors import ConfigError
from adray.train.bgad_options import FitBgadOptions
from adray.train.m3dm_options import M3DMBuildOptions

MODELS = {
    m.__name__: m
    for m in (
        M3DMConfig,
        M3DMBuildOptions,
        BgadConfig,
        BgadTrainConfig,
        LossConfig,
        FitBgadOptions,
        WinClipConfig,
        WinClipCommandOptions,
    )
}
REQUIRED = {
    "build-m3dm": ["--train", "/d", "--category", "cookie", "--output", "/o"],
    "fit-bgad": ["--train", "/d", "--category", "bottle", "--output", "/o"],
    "winclip": ["--class-name", "bottle", "img.png"],
}
# the flags each command generates from config fields (the others are derived or not config at all)
GENERATED = {
    "build-m3dm": {
        "category",
        "mode",
        "point_weights",
        "img_size",
        "seed",
        "target_fpr",
        "target_pixel_fpr",
        "workers",
        "uff_workers",
        "batch_size",
        "gpus_per_worker",
    },
    "fit-bgad": {
        "num_anomalies",
        "copy_paste_variants",
        "anomaly_repeats",
        "calibration_fraction",
        "target_fpr",
        "target_pixel_fpr",
        "backbone",
        "pretrained_tag",
        "weights",
        "flow_blocks",
        "top_k",
        "epochs",
        "sub_epochs",
        "ml_epochs",
        "batch_size",
        "chunk_size",
        "lr",
        "beta",
        "tau",
        "seed",
        "workers",
        "gpus_per_worker",
        "cpus_per_worker",
        "run_name",
        "checkpoint_root",
    },
    "winclip": {"class_name", "weights", "model", "pretrained_tag", "precision", "device", "batch_size"},
}


def _field(action):
    model_name, name = action.config_field.split(".")
    return MODELS[model_name].model_fields[name]


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_generated_flags_take_default_and_help_from_their_field(command):
    actions = build_parser(f"adray {command}", command)._actions
    generated = [a for a in actions if hasattr(a, "config_field")]
    assert {a.dest for a in generated} == GENERATED[command]
    for action in generated:
        field = _field(action)
        if field.is_required():
            assert action.required and action.default is None, action.dest
        else:
            assert action.default == field.get_default(call_default_factory=True), action.dest
        assert action.help == (flag_of(field).help or field.description), action.dest


@pytest.mark.parametrize(
    ("command", "field", "dest"),
    [
        ("build-m3dm", M3DMBuildOptions.model_fields["workers"], "workers"),
        ("build-m3dm", M3DMConfig.model_fields["img_size"], "img_size"),
        ("fit-bgad", FitBgadOptions.model_fields["cpus_per_worker"], "cpus_per_worker"),
        ("fit-bgad", BgadTrainConfig.model_fields["seed"], "seed"),
        ("winclip", WinClipCommandOptions.model_fields["batch_size"], "batch_size"),
    ],
)
def test_a_changed_field_default_is_the_flags_default(command, field, dest, monkeypatch):
    monkeypatch.setattr(field, "default", 5)
    parser = build_parser(f"adray {command}", command)
    assert next(a for a in parser._actions if a.dest == dest).default == 5
    assert getattr(parser.parse_args(REQUIRED[command]), dest) == 5


def test_build_m3dm_without_options_builds_the_default_config_and_options():
    args = build_parser("adray build-m3dm", "build-m3dm").parse_args(REQUIRED["build-m3dm"])
    assert config_from_args(args) == M3DMConfig(category="cookie")
    assert options_from_args(args) == M3DMBuildOptions()


def test_build_m3dm_derived_flags_map_onto_the_config():
    parser = build_parser("adray build-m3dm", "build-m3dm")
    argv = [
        *REQUIRED["build-m3dm"],
        "--seed",
        "3",
        "--coreset-ratio",
        "0.2",
        "--no-fusion",
        "--uff-steps",
        "30",
    ]
    argv += ["--rgb-backbone", "vit_small_patch16_224", "--weights", "random", "--no-preprocess"]
    cfg = config_from_args(parser.parse_args(argv))
    assert (cfg.seed, cfg.point_seed, cfg.vit) == (
        3,
        3,
        ViTConfig(name="vit_small_patch16_224", weights="random", seed=3),
    )
    assert cfg.coreset_ratio == {"rgb": 0.2, "xyz": 0.2, "fused": 0.2} and not cfg.fusion
    assert (cfg.uff.steps, cfg.uff.warmup_steps, cfg.preprocess.enabled) == (30, 10, False)
    # --tiny: tiny_config's own image size and random point weights, unless another size is asked for
    tiny = config_from_args(
        parser.parse_args([*REQUIRED["build-m3dm"], "--tiny", "--point-weights", "/p.pth"])
    )
    assert tiny == tiny_config("cookie")
    sized = config_from_args(parser.parse_args([*REQUIRED["build-m3dm"], "--tiny", "--img-size", "32"]))
    assert sized == tiny_config("cookie", img_size=32)


def test_build_m3dm_refuses_a_bad_rate_before_starting_ray(monkeypatch, capsys):
    import adray.commands.build_m3dm as command

    monkeypatch.setattr(command, "ensure_ray", lambda address=None: pytest.fail("Ray started"))
    argv = ["build-m3dm", *REQUIRED["build-m3dm"], "--tiny", "--target-fpr", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target-fpr must be <= 1" in err[0]


def test_build_m3dm_keeps_its_keyword_api(monkeypatch):
    """build_m3dm(..., workers=1, target_fpr=...) as before: the keywords set the options' fields, a bad
    one is refused before anything runs."""
    import adray.train.m3dm as train

    seen = {}

    def stop(train_uri, category):
        seen["called"] = True
        raise RuntimeError("stop here")

    monkeypatch.setattr(train, "select_items", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        train.build_m3dm("/d", "/o", tiny_config("cookie"), workers=1, uff_workers=0, target_fpr=0.05)
    assert seen == {"called": True}
    with pytest.raises(ConfigError, match="worker: unknown setting"):
        train.build_m3dm("/d", "/o", tiny_config("cookie"), worker=1)
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        train.build_m3dm("/d", "/o", tiny_config("cookie"), options=M3DMBuildOptions(), batch_size=0)
    assert M3DMBuildOptions(workers=3).uff_world == 3 and M3DMBuildOptions(uff_workers=0).uff_world == 0


def test_fit_bgad_without_options_builds_the_default_configs_and_options():
    args = build_parser("adray fit-bgad", "fit-bgad").parse_args(REQUIRED["fit-bgad"])
    assert configs_from_flags(args) == (BgadConfig(category="bottle"), BgadTrainConfig())
    options = FitBgadOptions(**flag_values(FitBgadOptions, args))
    assert options == FitBgadOptions()
    kwargs = options.fit_kwargs()
    from adray.train.bgad import fit_bgad

    # fit_bgad takes the options (its old keywords set their fields): no default restated in its signature
    params = inspect.signature(fit_bgad).parameters
    assert "options" in params and not set(kwargs) & set(params)
    assert FitBgadOptions().replace(**kwargs) == options
    root = FitBgadOptions(checkpoint_root="ckpt").fit_kwargs()["checkpoint_root"]
    assert root.endswith("/ckpt") and root != "ckpt"  # absolute: Ray workers have another directory
    assert FitBgadOptions(checkpoint_root="ckpt").absolute().checkpoint_root == root


def test_winclip_without_options_builds_the_default_config_and_options():
    args = build_parser("adray winclip", "winclip").parse_args(REQUIRED["winclip"])
    assert WinClipConfig(**flag_values(WinClipConfig, args), defect_types=args.defect_type) == WinClipConfig(
        "bottle"
    )
    options = WinClipCommandOptions(**flag_values(WinClipCommandOptions, args))
    assert options == WinClipCommandOptions()
    from adray.detectors.winclip import create_winclip

    assert set(options.backbone_kwargs()) <= set(inspect.signature(create_winclip).parameters)
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        WinClipCommandOptions(batch_size=0)
