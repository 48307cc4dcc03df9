"""The Detector contract, its typed output, the registry and the artifact format.

A detector is plain torch: the same object scores a tensor in a notebook and runs inside a Ray actor.
The pipeline only ever talks to this contract:

- ``name``: registry key (``"winclip"``, ``"bgad"``, ``"m3dm"``)
- ``version``: content hash of config + weights (:func:`content_hash`)
- ``modalities``: ``("rgb",)`` or ``("rgb", "xyz")``
- ``categories``: the categories it can score, or ``None`` for any (zero-shot)
- ``threshold``: calibrated decision threshold on ``image_score``, or ``None``
- ``preprocess(sample) -> dict[str, np.ndarray]``: CPU stage; fixed shapes so batches stack
- ``score(batch) -> ScoreBatch``: ``image_score float32[N]``, ``anomaly_map float32[N, H, W]``
- ``save(uri)`` / ``load(uri)``: an artifact folder (``config.json`` + safetensors), never pickle

Scores are batch-invariant: an item's score never depends on the rest of its batch.

A *sample* is a dict with ``"image"`` (uint8 ``[H, W, 3]`` RGB), optionally ``"xyz"`` (float32
``[H, W, 3]`` organised point cloud, zeros where points are missing), ``"category"`` and ``"item_id"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from adray import storage

ARTIFACT_SCHEMA_VERSION = "1.0"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class ScoreBatch:
    """What a detector returns for a batch of N items."""

    image_score: torch.Tensor  # float32 [N]
    anomaly_map: torch.Tensor  # float32 [N, H, W]

    def __post_init__(self) -> None:
        if self.image_score.ndim != 1 or self.anomaly_map.ndim != 3:
            raise ValueError(
                f"ScoreBatch wants image_score [N] and anomaly_map [N, H, W], got "
                f"{tuple(self.image_score.shape)} and {tuple(self.anomaly_map.shape)}"
            )
        if self.image_score.shape[0] != self.anomaly_map.shape[0]:
            raise ValueError("image_score and anomaly_map disagree on the batch size")

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.image_score.detach().float().cpu().numpy(),
            self.anomaly_map.detach().float().cpu().numpy(),
        )


@runtime_checkable
class Detector(Protocol):
    name: ClassVar[str]
    modalities: tuple[str, ...]

    @property
    def version(self) -> str: ...

    @property
    def categories(self) -> tuple[str, ...] | None: ...

    @property
    def threshold(self) -> float | None: ...

    def preprocess(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]: ...

    def score(self, batch: Mapping[str, Any]) -> ScoreBatch: ...

    def save(self, uri: str) -> None: ...

    @classmethod
    def load(cls, uri: str, device: str | None = None) -> Detector: ...


# -------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type] = {}
_FACTORIES: dict[str, Callable[..., Detector]] = {}
_PREPROCESSORS: dict[str, Callable[..., Callable[[Mapping[str, Any]], dict[str, np.ndarray]]]] = {}


def register_detector(name: str, factory: Callable[..., Detector] | None = None) -> Callable[[type], type]:
    """Class decorator: register a detector class (for ``load``) and optionally a by-name factory.

    The factory builds an unfitted/zero-shot detector from keyword options, e.g.
    ``create_detector("winclip", class_name="bottle", weights="random")``.
    """

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        if factory is not None:
            _FACTORIES[name] = factory
        return cls

    return deco


def register_factory(name: str, factory: Callable[..., Detector]) -> None:
    _FACTORIES[name] = factory


def register_preprocessor(
    name: str, factory: Callable[..., Callable[[Mapping[str, Any]], dict[str, np.ndarray]]]
) -> None:
    """Register a model-free preprocessor for a by-name detector.

    ``factory(**options)`` takes the same options as the detector factory and returns a function equal to
    ``create_detector(name, **options).preprocess`` that needs no weights: the pipeline's CPU decode tasks
    use it so they never load a model (WinCLIP's preprocess needs only the image size and mean/std).
    """
    _PREPROCESSORS[name] = factory


def create_preprocessor(
    name: str, **options: Any
) -> Callable[[Mapping[str, Any]], dict[str, np.ndarray]] | None:
    """The registered model-free preprocessor for ``name`` with ``options``, or ``None`` if there is none."""
    _import_builtin_detectors()
    factory = _PREPROCESSORS.get(name)
    return None if factory is None else factory(**options)


def _import_builtin_detectors() -> None:
    # Importing the packages registers them; done lazily so `adray.detectors.base` stays light.
    import importlib

    for mod in ("adray.detectors.winclip", "adray.detectors.bgad", "adray.detectors.m3dm"):
        try:
            importlib.import_module(mod)
        except ImportError as e:  # a detector whose optional deps are missing stays unregistered
            if f"'{mod}'" in str(e) or mod.rsplit(".", 1)[-1] in str(e):
                continue
            raise


def registered_detectors() -> list[str]:
    _import_builtin_detectors()
    return sorted(set(_REGISTRY) | set(_FACTORIES))


def create_detector(name: str, **options: Any) -> Detector:
    """Build a detector by registry name (zero-shot or unfitted), e.g. ``create_detector("winclip", ...)``."""
    _import_builtin_detectors()
    if name not in _FACTORIES:
        raise KeyError(
            f"no detector factory named {name!r}; known: {sorted(_FACTORIES)}. Fitted detectors load from an "
            "artifact URI instead (a folder with config.json)"
        )
    return _FACTORIES[name](**options)


def load_detector(uri: str, device: str | None = None) -> Detector:
    """Load any registered detector from its artifact folder."""
    _import_builtin_detectors()
    config = read_artifact_config(uri)
    name = config.get("detector")
    if name not in _REGISTRY:
        raise ValueError(f"artifact {uri} names detector {name!r}, not one of {sorted(_REGISTRY)}")
    return _REGISTRY[name].load(uri, device=device)


# -------------------------------------------------------------------------------------------- artifacts


def content_hash(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None) -> str:
    """A short, stable hash of a JSON-able config and named tensors (order-independent)."""
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for key in sorted(tensors or {}):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def tensors_from_bytes(data: bytes, device: str | None = None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    out = load(data)
    return {k: v.to(device) for k, v in out.items()} if device else out


def save_artifact(
    uri: str,
    *,
    detector: str,
    version: str,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write an artifact folder: tensors first, ``config.json`` last (its presence marks it complete).

    ``config`` is the detector's configuration (hyperparameters, backbone tag and weight hash, ...);
    ``metadata`` holds provenance that does not change the version (fit time, data used, calibration).
    ``extra_files`` maps file names (``banks.safetensors``) to more named tensors.
    """
    files: dict[str, str] = {}
    blob = tensors_to_bytes(tensors)
    storage.write_bytes(storage.join_url(uri, WEIGHTS_FILE), blob)
    files[WEIGHTS_FILE] = hashlib.sha256(blob).hexdigest()
    for fname, group in (extra_files or {}).items():
        if not fname.endswith(".safetensors"):
            raise ValueError(f"extra artifact file {fname!r} must be .safetensors")
        blob = tensors_to_bytes(group)
        storage.write_bytes(storage.join_url(uri, fname), blob)
        files[fname] = hashlib.sha256(blob).hexdigest()
    doc = {
        "schema": "adray/artifact",
        "schema_version": ARTIFACT_SCHEMA_VERSION,
        "detector": detector,
        "version": version,
        "config": dict(config),
        "metadata": dict(metadata or {}),
        "files": files,
    }
    storage.write_text(
        storage.join_url(uri, CONFIG_FILE), json.dumps(doc, indent=2, sort_keys=True, default=_json_default)
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON-serialisable in an artifact config: {type(o).__name__}")


def read_artifact_config(uri: str) -> dict[str, Any]:
    url = storage.join_url(uri, CONFIG_FILE)
    try:
        doc = json.loads(storage.read_text(url))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"no detector artifact at {uri}: {CONFIG_FILE} is missing (was the fit finished? artifacts are "
            "complete only once config.json is written)"
        ) from e
    if doc.get("schema") != "adray/artifact":
        raise ValueError(f"{url} is not an adray artifact config (schema={doc.get('schema')!r})")
    return doc


def load_artifact(
    uri: str, device: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Read an artifact: (config document, weights, {extra file name: tensors}); hashes are verified."""
    doc = read_artifact_config(uri)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for fname, digest in doc.get("files", {}).items():
        blob = storage.read_bytes(storage.join_url(uri, fname))
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ValueError(
                f"artifact file {storage.join_url(uri, fname)} does not match its recorded sha256"
            )
        groups[fname] = tensors_from_bytes(blob, device)
    weights = groups.pop(WEIGHTS_FILE, {})
    return doc, weights, groups


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
