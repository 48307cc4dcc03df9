"""The artifact format every detector shares: a folder with ``config.json`` and safetensors files.

``config.json`` (schema ``schemas/artifact``) names the detector, its version (a content hash, see
:func:`content_hash`), its configuration and provenance metadata, and the sha256 of every tensor file;
``weights.safetensors`` holds the detector's tensors and optional extra ``*.safetensors`` files hold more
(M3DM's memory banks). Never pickle. The folder is complete once ``config.json`` exists (written last).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from adray import storage

ARTIFACT_SCHEMA_VERSION = "1.0"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def content_hash(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None) -> str:
    """A short, stable hash of a JSON-able config and named tensors: the detector ``version``.

    Returns 16 hex digits of a sha256 over the config (JSON, sorted keys) and, per tensor in name order,
    its name, dtype, shape and raw bytes; so it is independent of dict order and changes with any weight.
    Tensors of any shape and dtype (scalars included) are accepted; they are copied to CPU to hash.
    """
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
    """Named tensors (any shape, copied to contiguous CPU) as safetensors bytes."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def tensors_from_bytes(data: bytes, device: str | None = None) -> dict[str, torch.Tensor]:
    """Safetensors bytes as named tensors, on ``device`` when given (else CPU)."""
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
    """The ``config.json`` document of the artifact folder ``uri``, read without any weights.

    Raises ``FileNotFoundError`` when ``config.json`` is missing (an unfinished or absent artifact) and
    ``ValueError`` when the document is not an ``adray/artifact``.
    """
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
    """Read an artifact: (config document, weights, {extra file name: tensors}), tensors on ``device``.

    Every file's sha256 is checked against ``config.json``; raises ``ValueError`` on a mismatch and the
    errors of :func:`read_artifact_config`.
    """
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
