"""What a scoring run is asked to do: :class:`ScoreConfig` (the run) and :class:`DetectorSpec` (one detector).

Both are plain dataclasses, validated at the edge (:meth:`ScoreConfig.validated`) and small enough to be
pickled into every Ray task and actor. A detector is named either by registry name (``winclip``: built
by its factory, one instance per category with ``class_name=<category>`` unless ``--class-name`` pins
it) or by a fitted artifact URI (a folder with ``config.json``, loaded with ``load_detector``). The
pipeline never branches on which detector it is: everything goes through the Detector contract.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from adray import storage
from adray.errors import ConfigError

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
#: Ray's job supervisor passes the submission id to the entrypoint in this variable's JSON.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: ``--weights`` values that name no file
WEIGHT_KEYWORDS = ("pretrained", "random", "auto")


@dataclass(frozen=True)
class DetectorSpec:
    """One detector of a run, as data: registry name or artifact URI, plus factory options."""

    ref: str  # "winclip" or an artifact URI
    weights: str = "pretrained"
    class_name: str | None = None  # zero-shot prompt class; default: the item's category
    options: tuple[tuple[str, Any], ...] = ()  # extra factory keyword options (model_name=..., ...)
    references: tuple[tuple[str, tuple[str, ...]], ...] = ()  # k-shot: category -> reference image URIs
    device: str | None = None
    plugins: tuple[str, ...] = ()  # modules ("pkg.mod" or "pkg.mod:function") to load first, in every process

    @property
    def is_artifact(self) -> bool:
        return looks_like_artifact(self.ref)

    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def reference_uris(self, category: str) -> tuple[str, ...]:
        return dict(self.references).get(category, ())


def looks_like_artifact(ref: str) -> bool:
    """A detector given as a path or URL (an artifact folder) rather than a registry name."""
    return "://" in ref or ref.startswith(("/", ".", "~")) or os.sep in ref


@dataclass
class ScoreConfig:
    """One scoring (or re-inspection) run. Defaults suit a small CPU run; scale with the resource fields."""

    input: str  # a dataset prefix with a known layout, or a manifest URI (.parquet)
    output: str  # storage root: results/, masks/, runs/, manifests/
    detectors: list[str] = field(default_factory=lambda: ["winclip"])
    weights: str = "pretrained"  # pretrained | random | PATH (backbone weights for registry detectors)
    run_id: str | None = None  # default: the Ray submission id, else a UTC timestamp
    class_name: str | None = None  # override the prompt class name of zero-shot detectors
    detector_options: dict[str, Any] = field(default_factory=dict)  # extra factory options
    layout: str = "auto"  # dataset layout when input is a prefix
    split: str = "test"  # which manifest split to score; "all" for every item
    categories: list[str] | None = None  # only these categories
    limit: int | None = None  # score at most this many items (smoke runs)
    reference: str | None = None  # k-shot references: a manifest/prefix whose train split holds normal items
    shots: int = 0  # K reference items per category (0 = zero-shot)
    seed: int = 0
    delta: bool = False  # score only items whose (item_id, detector_version, content_token) has no result
    num_gpus: float = 0.0  # per scoring actor
    num_cpus: float = 1.0  # per scoring actor
    batch_size: int = 16  # scoring batch size
    actors: int = 1  # scoring actors
    decode_batch_size: int = 16
    decode_cpus: float = 1.0  # per decode task
    max_pixels: int = 64_000_000  # decompression-bomb guard for images
    max_points: int = 64_000_000  # point-cloud size guard, checked from the file's header
    bit_depth: int | None = None  # significant bits of >8-bit images (None: detect; manifest bit_depth wins)
    rows_per_block: int = 64  # manifest rows per input block (streaming granularity)
    device: str | None = None  # torch device inside the actors (default: cuda if num_gpus else cpu)
    plugins: list[str] = field(default_factory=list)  # "pkg.mod[:function]" to load in every worker
    retain_memory: bool = True  # actors keep freed blocks for reuse (adray.runtime.retain_freed_memory)
    actor_env: dict[str, str] = field(default_factory=dict)  # extra env vars for scoring actors (see actor_env_vars)
    address: str | None = None  # Ray cluster to attach to (auto, host:port, ray://...); default RAY_ADDRESS or embedded
    allow_prefixes: list[str] = field(default_factory=list)  # read only URIs under these (else status not_allowed)
    read_attempts: int = 5  # reads of one object before its row is read_error (adray.storage.read_object)

    def validated(self) -> ScoreConfig:
        """Check values a person typed; fill the run id; make local paths absolute (Ray workers do not share
        the driver's working directory). Returns ``self`` for chaining."""
        problems = []
        if not self.detectors:
            problems.append(
                "give at least one --detector (a registry name such as winclip, or an artifact URI)"
            )
        if self.run_id is None:
            self.run_id = default_run_id()
        if not RUN_ID_PATTERN.match(self.run_id):
            problems.append(f"--run-id {self.run_id!r} may only use letters, digits, '-' and '_' (max 128)")
        for name, value, low in (
            ("--batch-size", self.batch_size, 1),
            ("--actors", self.actors, 1),
            ("--decode-batch-size", self.decode_batch_size, 1),
            ("--rows-per-block", self.rows_per_block, 1),
        ):
            if int(value) < low:
                problems.append(f"{name} must be >= {low}, got {value}")
        if self.num_gpus < 0 or self.num_cpus < 0:
            problems.append("--num-gpus and --num-cpus must be >= 0")
        if self.read_attempts < 1:
            problems.append(f"read_attempts must be >= 1, got {self.read_attempts}")
        if self.max_pixels < 1 or self.max_points < 1:
            problems.append("--max-pixels and --max-points must be >= 1")
        if self.bit_depth is not None and not 1 <= self.bit_depth <= 16:
            problems.append(f"--bit-depth must be auto or 1..16, got {self.bit_depth}")
        if self.shots < 0:
            problems.append(f"--shots must be >= 0, got {self.shots}")
        if self.limit is not None and self.limit < 0:
            problems.append(f"--limit must be >= 0, got {self.limit}")
        if problems:
            raise ConfigError("invalid scoring configuration:\n  - " + "\n  - ".join(problems))
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
        opts = tuple(sorted(self.detector_options.items()))
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
        doc = json.loads(json.dumps(asdict(self), default=str))
        doc["actor_env"] = sorted(self.actor_env)
        return _redacted(doc)


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


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["model_name=adray-tiny-clip", "image_size=64"]`` -> dict; values are JSON when they parse."""
    out: dict[str, Any] = {}
    for key, value in split_pairs(pairs, "--detector-option").items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    """``["OMP_WAIT_POLICY=ACTIVE"]`` -> ``{"OMP_WAIT_POLICY": "ACTIVE"}`` (values stay strings)."""
    return split_pairs(pairs, "--actor-env")


def split_pairs(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """``KEY=VALUE`` strings -> dict (split at the first ``=``); a pair without one names ``flag``."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out
