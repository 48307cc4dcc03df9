"""The artifact header: what a detector is, read from ``config.json`` alone, without any weights.

Like diffusers' ``config.json`` read on its own, open_clip's ``preprocess_cfg`` kept next to the weights
and timm's ``PretrainedCfg``, an artifact written with format ``1.1`` says at its top level which
detector it is (``detector``, ``version``), what it scores (``categories``, ``modalities``), how it
decides (``threshold`` and how it was set, ``pixel_threshold``), how an input is prepared for it
(``preprocessing``: size, mean, std, resampling and the detector's own fields) and which ``config`` keys
stay outside its version (``unversioned``). The pipeline's driver reads headers to plan a run, its CPU
decode tasks preprocess from them (:func:`adray.detectors.registry.preprocessor_from_header`), and only
the scoring actors load weights.

Artifacts of format ``1.0`` (written before headers) carry none of these fields; their header is
derived from their ``config`` by the detector's registered legacy reader, with ``preprocessing`` left
``None`` where the input mean/std were not recorded (BGAD, M3DM: those still preprocess from the loaded
detector, as before).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from adray.detectors.artifact import ARTIFACT_SCHEMA_VERSION, HEADER_FIELDS, LEGACY_SCHEMA_VERSION

if TYPE_CHECKING:
    from adray.detectors.base import Detector

#: resampling names used in :attr:`Preprocessing.resampling`
RESAMPLING = ("bicubic-antialias", "lanczos")


class MissingHeaderError(ValueError):
    """A format ``1.0`` artifact (no header) of a detector that registered no legacy header reader: only
    loading the detector tells what it is."""


class Preprocessing(BaseModel):
    """How a raw sample becomes the detector's input, enough to rebuild its ``preprocess`` without weights.

    ``size``: ``(H, W)`` pixels of the image the detector scores (and of its maps); ``mean`` / ``std``: the
    per-channel RGB normalisation after scaling to [0, 1]; ``resampling``: how the image is resized to
    ``size`` (``bicubic-antialias``: torch bicubic with antialiasing; ``lanczos``: PIL Lanczos);
    ``params``: the detector's own fields (M3DM: its mode and point-cloud preprocessing settings).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resampling: str
    params: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As stored in ``config.json`` (lists, not tuples)."""
        return self.model_dump(mode="json")


class ArtifactHeader(BaseModel):
    """Everything an artifact's ``config.json`` says about its detector, without loading weights.

    Built by :func:`adray.detectors.registry.read_header`; ``config``, ``metadata`` and ``files`` are the
    document's own sections. ``legacy`` is true for format ``1.0`` artifacts, whose header fields were
    derived from ``config`` (their ``preprocessing`` may be ``None``).
    """

    model_config = ConfigDict(frozen=True)

    uri: str
    schema_version: str
    detector: str
    version: str
    categories: tuple[str, ...] | None
    modalities: tuple[str, ...]
    threshold: float | None = None
    threshold_source: str | None = None
    pixel_threshold: float | None = None
    preprocessing: Preprocessing | None = None
    unversioned: tuple[str, ...] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)

    @property
    def legacy(self) -> bool:
        """Written before headers (format ``1.0``): the header fields were derived, not recorded."""
        return self.schema_version == LEGACY_SCHEMA_VERSION

    @classmethod
    def from_doc(
        cls, uri: str, doc: Mapping[str, Any], derived: Mapping[str, Any] | None = None
    ) -> ArtifactHeader:
        """The header of the ``config.json`` document ``doc`` of ``uri``; ``derived`` fills the header
        fields of a format ``1.0`` document (recorded fields win). Raises ``pydantic.ValidationError``
        (a ``ValueError``) when a field has the wrong type or a required one is missing."""
        fields = {**dict(derived or {}), **{k: doc[k] for k in HEADER_FIELDS if doc.get(k) is not None}}
        return cls(
            uri=uri,
            schema_version=str(doc.get("schema_version", LEGACY_SCHEMA_VERSION)),
            detector=doc["detector"],
            version=doc["version"],
            config=dict(doc.get("config") or {}),
            metadata=dict(doc.get("metadata") or {}),
            files=dict(doc.get("files") or {}),
            **fields,
        )


def header_fields(
    detector: Detector, preprocessing: Preprocessing, unversioned: Sequence[str] = ()
) -> dict[str, Any]:
    """The header fields ``detector`` writes into its artifact (``save_artifact(..., header=...)``).

    Categories, modalities and threshold come through the Detector contract; ``threshold_source`` and
    ``pixel_threshold`` from attributes of those names when the detector has them (``threshold_source``
    else from ``detector.metadata``, where BGAD's fit records it). ``unversioned``
    names the ``config`` keys its version leaves out (see
    :class:`adray.detectors.artifact.VersionRule`). Returns JSON-able values.
    """
    cats = detector.categories
    threshold = detector.threshold
    pixel = getattr(detector, "pixel_threshold", None)
    return {
        "categories": None if cats is None else [str(c) for c in cats],
        "modalities": [str(m) for m in detector.modalities],
        "threshold": None if threshold is None else float(threshold),
        "threshold_source": threshold_source(detector),
        "pixel_threshold": None if pixel is None else float(pixel),
        "preprocessing": preprocessing.to_json(),
        "unversioned": list(unversioned),
    }


def threshold_source(detector: Detector) -> str | None:
    """How ``detector``'s thresholds were set: its ``threshold_source`` attribute, else
    ``metadata["threshold_source"]``, else ``None`` (not recorded)."""
    source = getattr(detector, "threshold_source", None)
    if source is None:
        source = (getattr(detector, "metadata", None) or {}).get("threshold_source")
    return None if source is None else str(source)


def check_header_matches(header: ArtifactHeader, detector: Detector, preprocessing: Preprocessing) -> None:
    """Raise ``ValueError`` when the loaded ``detector`` disagrees with what its header says (the header
    was edited after saving: decode tasks would preprocess for another model than the one scoring)."""
    if header.legacy:
        return
    expected = header_fields(detector, preprocessing, header.unversioned or ())
    problems = [
        f"{key}: header {recorded!r}, model {expected[key]!r}"
        for key in ("categories", "modalities", "threshold", "pixel_threshold", "preprocessing")
        if (recorded := _as_json(getattr(header, key))) != expected[key]
    ]
    if problems:
        raise ValueError(
            f"artifact {header.uri}: its config.json header disagrees with the detector it loads "
            f"({'; '.join(problems)}); the header was changed after saving"
        )


def _as_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple):
        return list(value)
    return value


__all__ = [
    "ARTIFACT_SCHEMA_VERSION",
    "HEADER_FIELDS",
    "RESAMPLING",
    "MissingHeaderError",
    "ArtifactHeader",
    "Preprocessing",
    "check_header_matches",
    "header_fields",
    "threshold_source",
]
