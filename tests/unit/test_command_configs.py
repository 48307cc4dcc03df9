"""The flags of synth, demo, catalog, query, labels, plan, fit and the benchmarks are generated from config
fields (adray.config.add_flags): parsing no optional flag gives the config's defaults, every generated
flag names the field its default lives in, and that field's default is the flag's default."""

from __future__ import annotations

import argparse
import importlib

import pytest

from adray.cli import build_parser
from adray.config import Flag, add_flags, flag_values
from adray.strategy.inventory import CategoryInventory, Inventory

#: flags that are no config field's (help; the cluster address: adray.pipeline.cluster.add_address_argument)
NOT_FIELDS = {"help", "address"}


def _models(parser: argparse.ArgumentParser) -> dict[str, type]:
    """``{model name: model class}`` for the config_field of each of the parser's actions."""
    out = {}
    for action in parser._actions:
        where = getattr(action, "config_field", None)
        if where:
            name = where.split(".")[0]
            module = importlib.import_module(_MODULE_OF[name])
            out[name] = getattr(module, name)
    return out


_MODULE_OF = {
    "SynthTarget": "adray.commands.synth",
    "SynthConfig": "adray.synthetic",
    "DemoConfig": "adray.commands.demo",
    "CatalogConfig": "adray.commands.catalog",
    "QueryConfig": "adray.commands.query",
    "LabelsListConfig": "adray.commands.labels",
    "PlanConfig": "adray.commands.plan",
    "FitConfig": "adray.commands.fit",
    "BenchmarkConfig": "adray.commands.benchmark",
    "WinclipBenchConfig": "adray.bench.winclip",
    "PipelineBenchConfig": "adray.bench.pipeline",
    "BgadFitBenchConfig": "adray.bench.bgad_fit",
    "BgadCompareConfig": "adray.bench.bgad_compare",
    "M3dmBenchConfig": "adray.bench.m3dm",
    "GpuBenchConfig": "adray.bench.gpu",
    "M3dmCompareConfig": "adray.bench.m3dm_compare",
}
#: benchmark module -> its config
BENCH_CONFIGS = {module: name for name, module in _MODULE_OF.items() if module.startswith("adray.bench.")}


def _check_fields(parser: argparse.ArgumentParser, where: str) -> None:
    """Each flag but NOT_FIELDS and positionals names its field, whose default is the flag's default."""
    models = _models(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _check_fields(sub, f"{where} {name}")
            continue
        if action.dest in NOT_FIELDS or not action.option_strings:
            continue
        field_ref = getattr(action, "config_field", None)
        assert field_ref, f"{where} {action.option_strings} is hand-written, not a config field's flag"
        model_name, field_name = field_ref.split(".")
        field = models[model_name].model_fields[field_name]
        if isinstance(action, argparse._AppendAction) or field.is_required():
            assert action.default is None, field_ref
        else:
            assert action.default == field.get_default(call_default_factory=True), field_ref


@pytest.mark.parametrize(
    "command", ["synth", "demo", "catalog", "query", "labels", "plan", "fit", "benchmark"]
)
def test_command_flags_are_config_fields(command):
    _check_fields(build_parser(f"adray {command}", command), command)


def _parse(command: str, argv: list[str]) -> argparse.Namespace:
    return build_parser(f"adray {command}", command).parse_args(argv)


def test_no_optional_flag_gives_the_config_defaults():
    from adray.commands.catalog import CatalogConfig
    from adray.commands.demo import DemoConfig
    from adray.commands.fit import FitConfig
    from adray.commands.labels import LabelsListConfig
    from adray.commands.plan import PlanConfig
    from adray.commands.query import QueryConfig
    from adray.commands.synth import SynthTarget
    from adray.synthetic import SynthConfig

    args = _parse("synth", ["--output", "o"])
    assert SynthConfig(**flag_values(SynthConfig, args)) == SynthConfig()
    assert SynthTarget(**flag_values(SynthTarget, args)) == SynthTarget(output="o")
    assert DemoConfig(**flag_values(DemoConfig, _parse("demo", []))) == DemoConfig()
    args = _parse("catalog", ["--input", "i", "--output", "o"])
    assert CatalogConfig(**flag_values(CatalogConfig, args)) == CatalogConfig(input="i", output="o")
    args = _parse("query", ["--results", "r"])  # the alias sets the same field
    assert QueryConfig(**flag_values(QueryConfig, args)) == QueryConfig(output="r")
    args = _parse("labels", ["list", "--output", "r"])
    assert LabelsListConfig(**flag_values(LabelsListConfig, args)) == LabelsListConfig(output="r")
    args = _parse("plan", ["--input", "i"])
    assert PlanConfig(**flag_values(PlanConfig, args)) == PlanConfig(input="i")
    args = _parse("fit", ["--input", "i", "--output", "o"])
    assert FitConfig(**flag_values(FitConfig, args)) == FitConfig(input="i", output="o")


@pytest.mark.parametrize("module", sorted(BENCH_CONFIGS))
def test_benchmark_defaults_are_its_config_defaults(module):
    bench = importlib.import_module(module)
    config = getattr(bench, BENCH_CONFIGS[module])
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert config(**flag_values(config, parser.parse_args([]))) == config()


def test_bgad_benchmark_configs_reach_bgad_as_their_flags_do():
    """configs_from_flags reads a benchmark's config as it reads its parsed flags; the shared fields
    (category, backbone, weights, image size) are one declaration for both BGAD benchmarks."""
    from adray.bench import bgad_compare, bgad_fit
    from adray.bench.bgad_config import BgadBenchConfig
    from adray.detectors.bgad.config import configs_from_flags

    for bench, config in (
        (bgad_fit, bgad_fit.BgadFitBenchConfig),
        (bgad_compare, bgad_compare.BgadCompareConfig),
    ):
        parser = argparse.ArgumentParser()
        bench.add_arguments(parser)
        args = parser.parse_args(["--epochs", "3", "--backbone", "resnet18"])
        cfg = config(**flag_values(config, args))
        assert configs_from_flags(cfg, seen_defects=None) == configs_from_flags(args, seen_defects=None)
        assert issubclass(config, BgadBenchConfig) and cfg.epochs == 3
        own = set(vars(config).get("__annotations__", {}))  # the fields this class declares itself
        assert own.isdisjoint(BgadBenchConfig.model_fields), f"{config.__name__} restates a shared field"


def test_pipeline_benchmark_repeats_must_be_positive():
    from adray.bench.pipeline import PipelineBenchConfig
    from adray.errors import ConfigError

    with pytest.raises(ConfigError, match="--repeats must be >= 1, got 0"):
        PipelineBenchConfig(repeats=0)


def test_synth_and_demo_flags_set_the_dataset_config():
    from adray.commands.demo import DEMO_ARCHIVE, DemoConfig
    from adray.synthetic import DEFAULT_IMAGE_SIZE, SynthConfig

    argv = ["--output", "o", "--size", "24", "--width", "40", "--categories", "nut, cookie", "--defects", ""]
    got = SynthConfig(**flag_values(SynthConfig, _parse("synth", argv + ["--n-validation", "1"])))
    assert (got.image_size, got.image_width, got.categories, got.defects) == (24, 40, ("nut", "cookie"), None)
    assert got.n_validation == 1 and got.for_layout("mvtec3d") == got  # set values stay
    unset = SynthConfig().for_layout("mvtec3d")
    assert (unset.categories, unset.image_size) == (("cookie",), DEFAULT_IMAGE_SIZE["mvtec3d"])
    demo = DemoConfig()  # the demo's size and seed are the synthetic archive's defaults
    assert (demo.size, demo.seed) == (DEFAULT_IMAGE_SIZE["mvtec"], SynthConfig().seed)
    assert DEMO_ARCHIVE.seed == SynthConfig().seed


def test_a_flag_alias_sets_the_same_field():
    from adray.commands.query import QueryConfig

    parser = argparse.ArgumentParser()
    add_flags(parser, QueryConfig, ("output",))
    (action,) = [a for a in parser._actions if a.dest == "output"]
    assert action.option_strings == ["--output", "--results"] and action.metavar == "ROOT"
    assert flag_values(QueryConfig, parser.parse_args(["--results", "s3://b/r"])) == {"output": "s3://b/r"}
    assert Flag("--x").aliases == ()


def test_inventory_keeps_the_named_categories_and_notes_unknown_ones():
    inv = Inventory("in", [CategoryInventory("bottle"), CategoryInventory("nut")])
    inv.keep_categories(None)
    assert [c.category for c in inv.categories] == ["bottle", "nut"] and inv.notes == []
    inv.keep_categories(["nut", "screw"])
    assert [c.category for c in inv.categories] == ["nut"]
    assert inv.notes == ["category 'screw' is not in the input"]
