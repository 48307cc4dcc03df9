"""One config mechanism (adray.config): pydantic configs round-trip through JSON, a bad value is one
ConfigError line naming its flag (exit 2 through the CLI), and the flags are generated from the fields."""

from __future__ import annotations

import argparse
import json
import pickle
from typing import Annotated, Literal

import pytest
from pydantic import Field, ValidationError

from adray.cli import build_parser, main
from adray.config import Config, Flag, add_flags, flag_values
from adray.errors import ConfigError
from adray.pipeline.spec import DetectorSpec, ScoreConfig


class _Tiny(Config):
    size: Annotated[int, Flag("--size")] = Field(8, ge=1, description="edge in pixels")
    names: Annotated[list[str], Flag("--name", metavar="N", repeatable=True)] = Field(
        default_factory=lambda: ["a"], description="a name (repeatable)"
    )
    fast: Annotated[bool, Flag("--no-fast", negate=True)] = Field(True, description="go slow")
    note: str | None = None


def test_flags_come_from_the_fields():
    parser = argparse.ArgumentParser()
    add_flags(parser, _Tiny, ("size", "names", "fast"))
    assert _Tiny(**flag_values(_Tiny, parser.parse_args([]))) == _Tiny()
    got = _Tiny(
        **flag_values(_Tiny, parser.parse_args(["--size", "3", "--name", "x", "--name", "y", "--no-fast"]))
    )
    assert (got.size, got.names, got.fast) == (3, ["x", "y"], False)
    assert "edge in pixels" in parser.format_help()
    with pytest.raises(ConfigError, match="--size"):
        _Tiny(**flag_values(_Tiny, parser.parse_args(["--size", "0"])))


class _Switches(Config):
    tiny: Annotated[bool, Flag("--tiny")] = Field(False, description="tiny random backbones")
    mode: Annotated[Literal["rgb", "xyz"], Flag("--mode", choices=True)] = Field("rgb", description="banks")


def test_bool_switches_literal_choices_and_where_each_default_lives():
    parser = argparse.ArgumentParser()
    add_flags(parser, _Switches, ("tiny", "mode"))
    assert _Switches(**flag_values(_Switches, parser.parse_args([]))) == _Switches()
    got = _Switches(**flag_values(_Switches, parser.parse_args(["--tiny", "--mode", "xyz"])))
    assert (got.tiny, got.mode) == (True, "xyz")
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "both"])  # not one of the Literal's values
    fields = {a.dest: getattr(a, "config_field", None) for a in parser._actions}
    assert fields == {"help": None, "tiny": "_Switches.tiny", "mode": "_Switches.mode"}


def test_errors_are_one_line_and_name_the_flag():
    with pytest.raises(ConfigError) as info:
        ScoreConfig(input="i", output="o", batch_size=0, bit_depth=17)
    text = str(info.value)
    assert "\n" not in text and text.startswith("invalid scoring configuration: ")
    assert "--batch-size must be >= 1, got 0" in text and "--bit-depth must be <= 16, got 17" in text
    with pytest.raises(ConfigError, match="unknown setting"):
        ScoreConfig(input="i", output="o", batch_sise=4)
    with pytest.raises(ConfigError, match="at least one --detector"):
        ScoreConfig(input="i", output="o", detectors=[])
    with pytest.raises(ConfigError, match="--input is required"):
        ScoreConfig(output="o")


def test_score_config_round_trips_through_json():
    cfg = ScoreConfig(
        input="s3://b/m.parquet",
        output="/tmp/out",
        detectors=["winclip", "s3://b/models/bgad"],
        detector_options={"model_name": "adray-tiny-clip", "image_size": 64},
        categories=["bottle"],
        bit_depth=12,
        num_gpus=0.5,
        actor_env={"X": "1"},
    )
    doc = json.loads(json.dumps(cfg.to_dict()))
    assert ScoreConfig.from_dict(doc) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # shipped to Ray workers
    assert cfg.replace(delta=True).delta and not cfg.delta


def test_detector_spec_is_frozen_hashable_and_round_trips():
    spec = DetectorSpec(
        "winclip", weights="random", options=(("k", 1),), references=(("bottle", ("a", "b")),)
    )
    assert DetectorSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(spec) == hash(DetectorSpec.from_dict(spec.to_dict()))
    assert spec.reference_uris("bottle") == ("a", "b") and spec.replace(device="cpu").device == "cpu"
    with pytest.raises(ValidationError, match="frozen"):
        spec.ref = "other"  # type: ignore[misc]


def test_score_flags_build_the_config_and_defaults_are_the_fields():
    from adray.commands.score import config_from_args

    parser = build_parser("adray score", "score")
    args = parser.parse_args(["--input", "m.parquet", "--output", "out", "--detector-option", "size=64"])
    cfg = config_from_args(args)
    default = ScoreConfig(input="m.parquet", output="out")
    assert cfg.detector_options == {"size": 64}
    assert cfg.replace(detector_options={}) == default  # every other value is the field's default


@pytest.mark.parametrize("command", ["score", "reinspect"])
def test_address_flag_reaches_the_config(command):
    """--address is not a field's flag (cluster.add_address_argument adds it): the run must still attach."""
    from adray.commands.score import config_from_args

    parser = build_parser(f"adray {command}", command)
    args = parser.parse_args(["--input", "m.parquet", "--output", "out", "--address", "127.0.0.1:6379"])
    assert config_from_args(args, delta=command == "reinspect").address == "127.0.0.1:6379"
    args = parser.parse_args(["--input", "m.parquet", "--output", "out"])
    assert config_from_args(args).address is None


def test_bad_flag_value_exits_2_with_one_line(tmp_path, capsys):
    argv = ["score", "--input", str(tmp_path / "m.parquet"), "--output", str(tmp_path / "o"), "--actors", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("adray score: error: invalid scoring configuration:")
    assert "--actors" in err
    assert main(["score", "--input", "m", "--output", "o", "--actor-env", "NOEQUALS"]) == 2
    assert "--actor-env wants KEY=VALUE" in capsys.readouterr().err


def test_eval_config_flags_errors_and_round_trip():
    from adray.evaluation import EvalConfig, EvaluationError

    parser = build_parser("adray evaluate", "evaluate")
    base = ["--results", "r", "--input", "i", "--report", "o"]
    assert EvalConfig(**flag_values(EvalConfig, parser.parse_args(base))) == EvalConfig()
    got = EvalConfig(
        **flag_values(EvalConfig, parser.parse_args([*base, "--target-fpr", "0.2", "--worst", "1"]))
    )
    assert got.target_fprs == (0.2,) and got.worst == 1
    assert EvalConfig.from_dict(json.loads(json.dumps(got.to_dict()))) == got
    with pytest.raises(EvaluationError, match="--fpr-limit") as info:
        EvalConfig(fpr_limit=0)
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)


def test_bgad_configs_round_trip_and_old_documents_load():
    from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig
    from adray.detectors.bgad.losses import LossConfig

    model = BgadConfig(category="bottle", out_indices=(2, 3), weights="random")
    train = BgadTrainConfig(seen_defects=("crack",), loss=LossConfig(beta=0.05, focal_weighting=False))
    assert BgadConfig.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    assert BgadTrainConfig.from_dict(json.loads(json.dumps(train.to_dict()))) == train
    assert model.to_dict()["out_indices"] == [2, 3] and BgadTrainConfig().to_dict()["seen_defects"] is None
    # a document from another version: unknown keys (also in loss) are ignored, missing ones take defaults
    old = BgadTrainConfig.from_dict({"meta_epochs": 3, "retired": 1, "loss": {"beta": 0.02, "retired": 2}})
    assert (old.meta_epochs, old.loss.beta, old.sub_epochs) == (3, 0.02, BgadTrainConfig().sub_epochs)
    with pytest.raises(ConfigError, match="image_size"):
        BgadConfig(image_size="big")


def test_one_mapping_from_fit_flags_to_bgad_configs():
    """adray fit-bgad's flags and the BGAD benchmarks' go through configs_from_flags; it sets what each flag
    names (the seed three fields, --no-focal the loss) and leaves the rest at the config defaults."""
    from adray.bench import bgad_compare, bgad_fit
    from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig, configs_from_flags
    from adray.detectors.bgad.losses import LossConfig

    flags = ["--train", "t", "--category", "bottle", "--output", "o", "--weights", "random", "--seed", "7"]
    flags += ["--out-indices", "2,3", "--flow-blocks", "2", "--epochs", "3", "--no-focal", "--beta", "0.05"]
    flags += ["--seen-defects", "crack, hole", "--pretrained-tag", ""]
    args = build_parser("adray fit-bgad", "fit-bgad").parse_args(flags)
    model, train = configs_from_flags(args)
    assert (model.category, model.out_indices, model.n_blocks, model.pretrained_tag) == (
        "bottle",
        (2, 3),
        2,
        None,
    )
    assert (model.flow_seed, model.backbone_seed, train.seed) == (7, 7, 7)
    assert (train.meta_epochs, train.seen_defects) == (3, ("crack", "hole"))
    assert train.loss == LossConfig(beta=0.05, focal_weighting=False)

    p = argparse.ArgumentParser()
    bgad_fit.add_arguments(p)
    model, train = configs_from_flags(p.parse_args([]), copy_paste_variants=1)
    assert model == BgadConfig(
        category="bottle", backbone="test_efficientnet", weights="random", image_size=64
    )
    assert train == BgadTrainConfig(
        meta_epochs=2, sub_epochs=2, batch_size=8, num_anomalies=4, copy_paste_variants=1
    )
    p = argparse.ArgumentParser()
    bgad_compare.add_arguments(p)
    model, train = configs_from_flags(p.parse_args(["--no-focal", "--seen-defects", "a"]), seen_defects=None)
    assert (model.n_blocks, train.meta_epochs, train.chunk_size, train.seen_defects) == (4, 10, 1024, None)
    assert not train.loss.focal_weighting and train.num_anomalies == 10
