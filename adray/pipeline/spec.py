"""What a scoring run is asked to do: :class:`ScoreConfig` (the run) and :class:`DetectorSpec` (one detector).

Both are pydantic models (:class:`adray.config.Config`): values are checked when they are built (a bad one
is a one-line :class:`adray.errors.ConfigError` naming its flag), :meth:`ScoreConfig.validated` fills the
run id and makes paths absolute, and both are small enough to be pickled into every Ray task and actor.
The fields of :class:`ScoreConfig` are also the flags of ``adray score`` / ``reinspect``.

A detector is named either by registry name (``winclip``: built by its factory, one instance per category
with ``class_name=<category>`` unless ``--class-name`` pins it) or by a fitted artifact URI (a folder with ``config.json``, loaded with ``load_detector``). The
pipeline never branches on which detector it is: everything goes through the Detector contract.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator

from adray import storage
from adray.config import Config, Flag, flag_values, parse_env, parse_options
from adray.detectors import thresholds as decisions

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
#: Ray's job supervisor passes the submission id to the entrypoint in this variable's JSON.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: ``--weights`` values that name no file
WEIGHT_KEYWORDS = ("pretrained", "random", "auto")
#: a false-positive rate: from 0 to 1
Rate = Annotated[float, Field(ge=0, le=1)]


def _bit_depth(text: str) -> int | None:
    """``--bit-depth`` values: ``auto`` (None) or 1..16."""
    if text == "auto":
        return None
    try:
        bits = int(text)
    except ValueError:
        bits = 0
    if not 1 <= bits <= 16:
        raise argparse.ArgumentTypeError(f"want auto or an integer 1..16, got {text!r}")
    return bits


class DetectorSpec(Config):
    """One detector of a run, as data: registry name or artifact URI, plus factory options (frozen and
    hashable: it keys the per-process detector cache)."""

    model_config = ConfigDict(frozen=True)

    ref: str  # "winclip" or an artifact URI
    weights: str = "pretrained"
    class_name: str | None = None  # zero-shot prompt class; default: the item's category
    options: tuple[tuple[str, Any], ...] = ()  # extra factory keyword options (model_name=..., ...)
    references: tuple[tuple[str, tuple[str, ...]], ...] = ()  # k-shot: category -> reference image URIs
    device: str | None = None
    plugins: tuple[str, ...] = ()  # modules ("pkg.mod" or "pkg.mod:function") to load first, in every process
    only_categories: tuple[str, ...] = ()  # score only these categories (--detector auto); () = any

    @property
    def is_artifact(self) -> bool:
        return looks_like_artifact(self.ref)

    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def reference_uris(self, category: str) -> tuple[str, ...]:
        return dict(self.references).get(category, ())


#: ``--detector auto``: each category gets the strategy the registry and the plan allow (adray.pipeline.auto)
AUTO = "auto"


def looks_like_artifact(ref: str) -> bool:
    """A detector given as a path or URL (an artifact folder) rather than a registry name."""
    return "://" in ref or ref.startswith(("/", ".", "~")) or os.sep in ref


class ScoreConfig(Config):
    """One scoring (or re-inspection) run. Defaults suit a small CPU run; scale with the resource fields.

    Each field states its default, bounds and help once; ``adray score`` / ``reinspect`` generate their
    flags from the fields (:func:`adray.config.add_flags`). A bad value raises
    :class:`adray.errors.ConfigError` naming the flag.
    """

    model_config = ConfigDict(title="scoring configuration")

    # data
    input: Annotated[str, Flag("--input")] = Field(
        description="dataset prefix with a known layout, or a manifest URI (.parquet/.csv/.jsonl)"
    )
    output: Annotated[str, Flag("--output")] = Field(
        description="storage root for results/, masks/, runs/ (local path or s3://...)"
    )
    layout: Annotated[str, Flag("--layout")] = Field(
        "auto", description="dataset layout when --input is a prefix (auto, mvtec, mvtec3d, visa, folder)"
    )
    split: Annotated[str, Flag("--split")] = Field(
        "test", description="manifest split to score (train, validation, test) or 'all' (default: test)"
    )
    categories: Annotated[list[str] | None, Flag("--category", metavar="NAME", repeatable=True)] = Field(
        None, description="score only this category (repeatable)"
    )
    limit: Annotated[int | None, Flag("--limit")] = Field(
        None, ge=0, description="score at most N items (smoke runs)"
    )
    allow_prefixes: Annotated[list[str], Flag("--allow-prefix", metavar="PREFIX", repeatable=True)] = Field(
        default_factory=list,
        description="read only item URIs under PREFIX (repeatable; e.g. s3://bucket/images); any other URI "
        "gets a row with status not_allowed. By default a manifest's URIs are read with the job's rights, "
        "whatever they name",
    )
    max_pixels: Annotated[int, Flag("--max-pixels")] = Field(
        64_000_000,
        ge=1,
        description="images over this many pixels get status too_large (decompression-bomb guard)",
    )
    max_points: Annotated[int, Flag("--max-points")] = Field(
        64_000_000,
        ge=1,
        description="point clouds whose header declares more points get status too_large (checked before "
        "reading)",
    )
    bit_depth: Annotated[int | None, Flag("--bit-depth", metavar="auto|BITS", type=_bit_depth)] = Field(
        None,
        ge=1,
        le=16,
        description="significant bits of 16-bit images, e.g. 12 for 12-bit camera data (default auto: the "
        "smallest of 10/12/14/16 bits that holds the image's maximum, noted in the row; a bit_depth "
        "manifest column sets it per item)",
    )
    # detectors
    detectors: Annotated[list[str], Flag("--detector", metavar="NAME_OR_ARTIFACT_URI", repeatable=True)] = (
        Field(
            default_factory=lambda: ["winclip"],
            description="a registry name (winclip) or a fitted artifact folder URI (BGAD, M3DM); repeatable "
            "(default: winclip)",
        )
    )
    weights: Annotated[str, Flag("--weights")] = Field(
        "pretrained",
        description="backbone weights of registry detectors: pretrained | random (tests/demos) | PATH",
    )
    class_name: Annotated[str | None, Flag("--class-name")] = Field(
        None, description="object name in zero-shot prompts (default: each item's category)"
    )
    reference: Annotated[str | None, Flag("--reference", metavar="URI")] = Field(
        None,
        description="k-shot: manifest or prefix whose train split holds the normal reference items "
        "(default: --input)",
    )
    shots: Annotated[int, Flag("--shots", metavar="K")] = Field(
        0,
        ge=0,
        description="k-shot: K normal reference items per category from the train split (0 = zero-shot)",
    )
    seed: Annotated[int, Flag("--seed")] = Field(0, description="seed for choosing reference items")
    detector_options: Annotated[
        dict[str, Any],
        Flag(
            "--detector-option",
            dest="detector_option",
            metavar="KEY=VALUE",
            repeatable=True,
            parse=parse_options,
        ),
    ] = Field(
        default_factory=dict,
        description="extra factory option for registry detectors, e.g. model_name=adray-tiny-clip "
        "(repeatable; JSON values parse)",
    )
    plugins: Annotated[list[str], Flag("--plugin", metavar="MODULE[:FUNCTION]", repeatable=True)] = Field(
        default_factory=list,
        description="import MODULE (and call FUNCTION) in every worker before building detectors (extra "
        "detectors or model configs)",
    )
    # run and resources
    run_id: Annotated[str | None, Flag("--run-id")] = Field(
        None,
        description="run id (default: the Ray submission id under `ray job submit`, else run-<UTC time>); "
        "re-running an id adds no duplicate rows and resumes an interrupted run",
    )
    num_gpus: Annotated[float, Flag("--num-gpus")] = Field(
        0.0, ge=0, description="GPUs per scoring actor (e.g. 1, or 0.5 to pack two)"
    )
    num_cpus: Annotated[float, Flag("--num-cpus")] = Field(1.0, ge=0, description="CPUs per scoring actor")
    batch_size: Annotated[int, Flag("--batch-size")] = Field(16, ge=1, description="items per scoring batch")
    actors: Annotated[int, Flag("--actors")] = Field(
        1, ge=1, description="scoring actors (each loads the model once)"
    )
    decode_batch_size: Annotated[int, Flag("--decode-batch-size")] = Field(
        16, ge=1, description="items per decode/preprocess task batch"
    )
    decode_cpus: Annotated[float, Flag("--decode-cpus")] = Field(
        1.0, ge=0, description="CPUs per decode task"
    )
    rows_per_block: Annotated[int, Flag("--rows-per-block")] = Field(
        64, ge=1, description="manifest rows per input block (streaming granularity)"
    )
    device: Annotated[str | None, Flag("--device")] = Field(
        None, description="torch device in the scoring actors (default: cuda when --num-gpus > 0, else cpu)"
    )
    retain_memory: Annotated[bool, Flag("--no-retain-memory", negate=True)] = Field(
        True,
        description="leave glibc's allocator at its defaults in the scoring actors (by default they keep "
        "freed blocks for reuse, which saves re-faulting large activations every batch; see "
        "adray/runtime.py)",
    )
    actor_env: Annotated[
        dict[str, str], Flag("--actor-env", metavar="KEY=VALUE", repeatable=True, parse=parse_env)
    ] = Field(
        default_factory=dict,
        description="environment variable for the scoring actors (repeatable); CPU actors default to "
        "OMP_WAIT_POLICY=PASSIVE unless this or the driver's environment sets it",
    )
    # decisions: the rates of thresholds placed at scoring time (WinCLIP+ on its references), pixel size
    target_fpr: Annotated[Rate, Flag("--target-fpr")] = Field(
        decisions.DEFAULT_TARGET_FPR,
        description="false-positive rate of thresholds calibrated at scoring time: WinCLIP+ (--shots >= 2) "
        "on leave-one-out scores of its references (default: %(default)s). Fitted artifacts keep theirs",
    )
    target_pixel_fpr: Annotated[Rate, Flag("--target-pixel-fpr")] = Field(
        decisions.DEFAULT_TARGET_PIXEL_FPR,
        description="pixel false-positive rate of the pixel threshold calibrated at scoring time, which "
        "sets the defect regions (default: %(default)s)",
    )
    pixel_size_mm: Annotated[float | None, Flag("--pixel-size-mm")] = Field(
        None,
        gt=0,
        description="size of one image pixel in millimetres: defect regions get area_mm2",
    )
    address: str | None = None  # Ray cluster (auto, host:port, ray://...); flag: cluster.add_address_argument
    # not flags
    delta: bool = False  # score only items whose (item_id, detector_version, content_token) has no result
    # reads of one object before its row is read_error (adray.storage.read_object)
    read_attempts: int = Field(5, ge=1)

    @field_validator("detectors")
    @classmethod
    def _some_detector(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(
                "give at least one --detector (a registry name such as winclip, or an artifact URI)"
            )
        return value

    @field_validator("run_id")
    @classmethod
    def _run_id_pattern(cls, value: str | None) -> str | None:
        if value is not None and not RUN_ID_PATTERN.match(value):
            raise ValueError(f"--run-id {value!r} may only use letters, digits, '-' and '_' (max 128)")
        return value

    def validated(self) -> ScoreConfig:
        """Fill the run id; check the storage URLs; make local paths absolute (Ray workers do not share
        the driver's working directory). Values were checked when the config was built. Returns ``self``."""
        if self.run_id is None:
            self.run_id = default_run_id()
        storage.resolve(self.input)
        storage.resolve(self.output)
        self.input = storage.absolute_url(self.input)
        self.output = storage.absolute_url(self.output)
        if self.reference:
            self.reference = storage.absolute_url(self.reference)
        self.detectors = [storage.absolute_url(d) if looks_like_artifact(d) else d for d in self.detectors]
        self.weights = storage.absolute_url(self.weights, keep=WEIGHT_KEYWORDS)
        self.allow_prefixes = [storage.absolute_url(p) for p in self.allow_prefixes]
        return self

    def actor_env_vars(self) -> dict[str, str]:
        """Environment of the scoring actors: ``actor_env`` over the defaults.

        CPU actors default to ``OMP_WAIT_POLICY=PASSIVE`` (unless the driver's environment sets it): they
        share the node's cores with Ray's own processes, and a torch thread that spins at a barrier while its
        partner is preempted holds a core the partner could run on. Measured on 2 cores (README, pipeline
        figures): 0.30 vs 0.28 items/s in the actor; a bare loop without Ray gains nothing from it.
        """
        env: dict[str, str] = {}
        if self.num_gpus == 0 and "OMP_WAIT_POLICY" not in os.environ:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        env.update({str(k): str(v) for k, v in self.actor_env.items()})
        return env

    def actor_device(self) -> str:
        return self.device or ("cuda" if self.num_gpus > 0 else "cpu")

    def detector_specs(self, references: dict[str, tuple[str, ...]] | None = None) -> list[DetectorSpec]:
        refs = tuple(sorted((references or {}).items()))
        rates = {"target_fpr": self.target_fpr, "target_pixel_fpr": self.target_pixel_fpr}
        opts = tuple(sorted({**rates, **self.detector_options}.items()))
        return [
            DetectorSpec(
                ref=d,
                weights=self.weights,
                class_name=self.class_name,
                options=() if looks_like_artifact(d) else opts,
                references=() if looks_like_artifact(d) else refs,
                device=self.actor_device(),
                plugins=tuple(self.plugins),
            )
            for d in self.detectors
        ]

    def to_json(self) -> dict[str, Any]:
        """The config as JSON for the run record; ``actor_env`` by names only (values may be secrets), URLs
        and other text without user info (:func:`adray.storage.redact_text`)."""
        doc = json.loads(json.dumps(self.model_dump(mode="json"), default=str))
        doc["actor_env"] = sorted(self.actor_env)
        return _redacted(doc)

    @classmethod
    def from_flags(cls, args: argparse.Namespace, **overrides: Any) -> ScoreConfig:
        """The config the parsed ``adray score`` flags describe (absent repeatable flags: the defaults).
        ``--address`` is added by :func:`adray.pipeline.cluster.add_address_argument`, not from a field's flag,
        so it is read here by name."""
        values = flag_values(cls, args)
        if getattr(args, "address", None) is not None:
            values["address"] = args.address
        return cls(**{**values, **overrides})


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return storage.redact_text(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


def default_run_id(now: datetime | None = None) -> str:
    """The Ray job submission id when running under ``ray job submit``, else ``run-YYYYMMDDTHHMMSSZ``."""
    submission = ray_submission_id()
    if submission and RUN_ID_PATTERN.match(submission):
        return submission
    now = now or datetime.now(timezone.utc)
    # A short random tail keeps two runs started in the same second apart.
    return f"{now.strftime('run-%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def submitted_job_config() -> dict[str, Any]:
    """The job config ``ray job submit`` hands this driver (its runtime_env, metadata); {} outside one or when
    it does not parse."""
    raw = os.environ.get(RAY_JOB_CONFIG_ENV)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def ray_submission_id() -> str | None:
    """The submission id of the Ray job this driver runs in, if any."""
    metadata = submitted_job_config().get("metadata")
    return metadata.get("job_submission_id") if isinstance(metadata, dict) else None


def load_plugins(plugins: tuple[str, ...] | list[str]) -> None:
    """Import each ``pkg.mod`` (and call ``function`` for ``pkg.mod:function``) once per process.

    This is how a run brings extra detectors or model configs (registered at import) into Ray workers,
    which do not share the driver's registry.
    """
    import importlib

    for plugin in plugins:
        if plugin in _LOADED_PLUGINS:
            continue
        module_name, _, func = plugin.partition(":")
        module = importlib.import_module(module_name)
        if func:
            getattr(module, func)()
        _LOADED_PLUGINS.add(plugin)


_LOADED_PLUGINS: set[str] = set()
