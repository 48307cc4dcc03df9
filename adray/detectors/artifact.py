"""The artifact format every detector shares: a folder with ``config.json`` and safetensors files.

``config.json`` (schema ``schemas/artifact``) names the detector, its version (a content hash, see
:func:`content_hash`), its configuration and provenance metadata, and the sha256 of every tensor file;
``weights.safetensors`` holds the detector's tensors and optional extra ``*.safetensors`` files hold more
(M3DM's memory banks). Never pickle. The folder is complete once ``config.json`` exists (written last).

Format ``1.1`` adds a header readable without weights (:mod:`adray.detectors.header`) and states what
goes into a version (:class:`VersionRule`); :func:`load_artifact` checks that rule the same way for
every detector. Format ``1.0`` artifacts (no header) load as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from adray import storage

#: format written by :func:`save_artifact` with a header; ``1.0``: before headers (still read)
ARTIFACT_SCHEMA_VERSION = "1.1"
LEGACY_SCHEMA_VERSION = "1.0"
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


@dataclass(frozen=True)
class VersionRule:
    """What goes into a detector's version, the one rule every artifact follows.

    ``version = content_hash(config without the `unversioned` keys, every tensor of every file)``, tensor
    names as stored (``drop_prefix`` removed: WinCLIP's format ``1.0`` files stored ``memory.<name>``).
    Format ``1.1`` artifacts record ``unversioned`` in their header; a ``1.0`` artifact is checked with the
    rule its detector passes to :func:`load_artifact`. Runtime choices (device, precision, chunking) and
    training provenance stay outside: they never change scores.
    """

    unversioned: tuple[str, ...] = ()
    drop_prefix: str = ""

    def version(self, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
        """16 hex digits: :func:`content_hash` of the versioned part of ``config`` and ``tensors``."""
        kept = {k: v for k, v in config.items() if k not in self.unversioned}
        named = {k.removeprefix(self.drop_prefix) if self.drop_prefix else k: v for k, v in tensors.items()}
        return content_hash(kept, named)


def check_version(
    uri: str, doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], rule: VersionRule
) -> None:
    """Raise ``ValueError`` unless ``doc["version"]`` is ``rule``'s version of ``doc["config"]`` and
    ``tensors`` (all files' tensors together): the header or the weights were changed after saving."""
    found = rule.version(doc.get("config", {}), tensors)
    if found != doc.get("version"):
        raise ValueError(
            f"artifact {uri}: config.json records version {doc.get('version')}, but its config and tensors "
            f"hash to {found}; the header or the weights were changed after saving (re-save or re-fit it)"
        )


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
    header: Mapping[str, Any] | None = None,
) -> None:
    """Write an artifact folder: tensors first, ``config.json`` last (its presence marks it complete).

    ``config`` is the detector's configuration (hyperparameters, backbone tag and weight hash, ...);
    ``metadata`` holds provenance that does not change the version (fit time, data used, calibration).
    ``extra_files`` maps file names (``banks.safetensors``) to more named tensors. ``header``
    (:func:`adray.detectors.header.header_fields`) makes it format ``1.1``: its fields go to the top
    level of ``config.json``, and ``version`` must follow :class:`VersionRule` with the header's
    ``unversioned`` keys. Without it the document is format ``1.0`` (plugins written before headers).
    Raises ``ValueError`` on an unknown header field, a version off the rule, a non-``.safetensors``
    extra file, and :class:`adray.schemas.SchemaError` when the document does not match ``schemas/artifact``.
    """
    if header is not None:
        _check_header(header, version, config, tensors, extra_files)
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
        "schema_version": ARTIFACT_SCHEMA_VERSION if header is not None else LEGACY_SCHEMA_VERSION,
        "detector": detector,
        "version": version,
        "config": dict(config),
        "metadata": dict(metadata or {}),
        "files": files,
        **dict(header or {}),
    }
    text = json.dumps(doc, indent=2, sort_keys=True, default=_json_default)
    from adray.schemas import validate_record

    validate_record(json.loads(text), "artifact")
    storage.write_text(storage.join_url(uri, CONFIG_FILE), text)


#: top-level fields a header adds to ``config.json`` (see :mod:`adray.detectors.header`)
HEADER_FIELDS = (
    "categories",
    "modalities",
    "threshold",
    "threshold_source",
    "pixel_threshold",
    "preprocessing",
    "unversioned",
)


def _check_header(
    header: Mapping[str, Any],
    version: str,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, Mapping[str, torch.Tensor]] | None,
) -> None:
    unknown = sorted(set(header) - set(HEADER_FIELDS))
    if unknown:
        raise ValueError(f"unknown artifact header fields {unknown}; known: {list(HEADER_FIELDS)}")
    everything = _merge_groups([tensors, *(extra_files or {}).values()])
    plain = json.loads(json.dumps(dict(config), default=_json_default))  # hashed as it will be read back
    found = VersionRule(tuple(header.get("unversioned") or ())).version(plain, everything)
    if found != version:
        raise ValueError(
            f"detector version {version} does not follow the artifact version rule (config less "
            f"{list(header.get('unversioned') or [])} and every tensor hash to {found}): a version must be "
            "reproducible from what the artifact holds"
        )


def _merge_groups(groups: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for group in groups:
        clash = sorted(set(out) & set(group))
        if clash:
            raise ValueError(f"tensor names {clash[:5]} appear in more than one artifact file")
        out.update(group)
    return out


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
    uri: str, device: str | None = None, legacy_rule: VersionRule | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Read an artifact: (config document, weights, {extra file name: tensors}), tensors on ``device``.

    Checked the same way for every detector: each file's sha256 against ``config.json``, then the
    version against :class:`VersionRule` (format ``1.1``: the header's ``unversioned``; ``1.0``:
    ``legacy_rule``, the detector's rule from before headers, or no version check when ``None``).
    Raises ``ValueError`` on a mismatch and the errors of :func:`read_artifact_config`.
    """
    doc = read_artifact_config(uri)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for fname, digest in doc.get("files", {}).items():
        blob = storage.read_bytes(storage.join_url(uri, fname))
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ValueError(
                f"artifact file {storage.join_url(uri, fname)} does not match its recorded sha256"
            )
        groups[fname] = tensors_from_bytes(blob)  # on CPU: hashed there, then moved
    rule = legacy_rule
    if doc.get("unversioned") is not None:
        rule = VersionRule(tuple(doc["unversioned"]))
    if rule is not None:
        check_version(uri, doc, _merge_groups(list(groups.values())), rule)
    if device:
        groups = {f: {k: v.to(device) for k, v in g.items()} for f, g in groups.items()}
    weights = groups.pop(WEIGHTS_FILE, {})
    return doc, weights, groups
