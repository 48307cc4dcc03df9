"""The detector registry: names -> detector classes, factories and model-free preprocessors.

Three tables, filled when a detector package is imported (``adray.detectors.winclip`` registers
``winclip``; plugins register theirs on import):

- the detector **class** of a name, whose ``load(uri, device)`` reads that detector's artifacts
  (:func:`register_detector`, :func:`get_detector`, :func:`load_detector`);
- a **factory** that builds an unfitted or zero-shot detector from keyword options
  (:func:`register_factory`, :func:`get_factory`, :func:`create_detector`);
- a **model-free preprocessor** equal to the detector's ``preprocess`` without loading weights, for the
  pipeline's CPU decode tasks (:func:`register_preprocessor`, :func:`create_preprocessor`);
- how to build that preprocessor from an **artifact header** (:func:`register_header`,
  :func:`read_header`, :func:`preprocessor_from_header`), and how to derive the header of an artifact
  written before headers (format ``1.0``).

The built-in detectors are imported on the first lookup, so ``import adray.detectors.registry`` stays light.
This is the only way the pipeline reads the registry; its tables are private.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from adray.detectors.artifact import read_artifact_config
from adray.detectors.header import ArtifactHeader, MissingHeaderError, Preprocessing, check_header_matches

if TYPE_CHECKING:
    from adray.detectors.base import Detector

#: ``sample -> arrays``: what a detector's ``preprocess`` does
Preprocess = Callable[[Mapping[str, Any]], dict[str, np.ndarray]]

BUILTIN_DETECTORS = ("adray.detectors.winclip", "adray.detectors.bgad", "adray.detectors.m3dm")

_CLASSES: dict[str, type] = {}
_FACTORIES: dict[str, Callable[..., Detector]] = {}
_PREPROCESSORS: dict[str, Callable[..., Preprocess]] = {}
_FROM_PREPROCESSING: dict[str, Callable[[Preprocessing], Preprocess]] = {}
_LEGACY_HEADERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def register_detector(name: str, factory: Callable[..., Detector] | None = None) -> Callable[[type], type]:
    """Class decorator: register a detector class under ``name`` (for :func:`load_detector`), and
    optionally a by-name factory (as :func:`register_factory`). A second registration replaces the first.

    >>> @register_detector("mine")          # doctest: +SKIP
    ... class MyDetector: ...
    """

    def deco(cls: type) -> type:
        _CLASSES[name] = cls
        if factory is not None:
            _FACTORIES[name] = factory
        return cls

    return deco


def register_factory(name: str, factory: Callable[..., Detector]) -> None:
    """Register ``factory(**options) -> Detector`` as the way :func:`create_detector` builds ``name``."""
    _FACTORIES[name] = factory


def register_preprocessor(name: str, factory: Callable[..., Preprocess]) -> None:
    """Register a model-free preprocessor for a by-name detector.

    ``factory(**options)`` takes the same options as the detector factory and returns a function equal to
    ``create_detector(name, **options).preprocess`` that needs no weights: the pipeline's CPU decode tasks
    use it so they never load a model (WinCLIP's preprocess needs only the image size and mean/std).
    """
    _PREPROCESSORS[name] = factory


def register_header(
    name: str,
    preprocessor: Callable[[Preprocessing], Preprocess],
    legacy: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Register how ``name``'s artifact headers are used without weights.

    ``preprocessor(preprocessing)`` returns a function equal to the saved detector's ``preprocess``;
    ``legacy(doc)`` derives the header fields (``categories``, ``modalities``, ``threshold``, ...,
    ``preprocessing`` or ``None``) of a format ``1.0`` ``config.json`` document, written before headers.
    """
    _FROM_PREPROCESSING[name] = preprocessor
    if legacy is not None:
        _LEGACY_HEADERS[name] = legacy


def read_header(uri: str) -> ArtifactHeader:
    """The header of the artifact folder ``uri``: its ``config.json`` alone, no weights read.

    The document is validated against ``schemas/artifact``; a format ``1.0`` artifact gets the fields its
    detector's legacy reader derives. Raises ``FileNotFoundError`` (no ``config.json``),
    :class:`adray.schemas.SchemaError` (a document off the schema), and
    :class:`~adray.detectors.header.MissingHeaderError` (a ``ValueError``) for a ``1.0`` artifact whose
    detector registered no legacy reader.
    """
    from adray.schemas import validate_record

    import_builtin_detectors()
    doc = read_artifact_config(uri)
    validate_record(doc, "artifact")
    name = doc["detector"]
    derived = None
    if doc.get("modalities") is None:
        if name not in _LEGACY_HEADERS:
            raise MissingHeaderError(
                f"artifact {uri} ({name!r}, format {doc.get('schema_version')}) has no header and no legacy "
                f"header reader is registered for {name!r}; load it with load_detector instead"
            )
        derived = _LEGACY_HEADERS[name](doc)
    return ArtifactHeader.from_doc(uri, doc, derived)


def preprocessor_from_header(header: ArtifactHeader) -> Preprocess | None:
    """The detector's ``preprocess`` rebuilt from ``header.preprocessing`` alone (no weights), or ``None``
    when the header has no preprocessing (a format ``1.0`` BGAD / M3DM artifact) or its detector
    registered no header preprocessor: then preprocess with the loaded detector."""
    import_builtin_detectors()
    build = _FROM_PREPROCESSING.get(header.detector)
    if build is None or header.preprocessing is None:
        return None
    return build(header.preprocessing)


def import_builtin_detectors() -> None:
    """Import the built-in detector packages (which registers them); a package whose optional
    dependencies are missing stays unregistered, any other ``ImportError`` is raised."""
    for mod in BUILTIN_DETECTORS:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            if f"'{mod}'" in str(e) or mod.rsplit(".", 1)[-1] in str(e):
                continue
            raise


def list_detectors() -> list[str]:
    """Every registered name, sorted: detector classes and by-name factories."""
    import_builtin_detectors()
    return sorted(set(_CLASSES) | set(_FACTORIES))


def registered_detectors() -> list[str]:
    """Alias of :func:`list_detectors` (the older name, kept)."""
    return list_detectors()


def get_detector(name: str) -> type:
    """The detector class registered as ``name`` (whose ``load`` reads its artifacts).

    Raises ``KeyError`` naming the known classes when there is none.
    """
    import_builtin_detectors()
    if name not in _CLASSES:
        raise KeyError(f"no detector class named {name!r}; known: {sorted(_CLASSES)}")
    return _CLASSES[name]


def get_factory(name: str) -> Callable[..., Detector] | None:
    """The factory registered for ``name``, or ``None`` (a detector that only loads from artifacts)."""
    import_builtin_detectors()
    return _FACTORIES.get(name)


def factory_accepts(name: str, options: Mapping[str, Any], optional: frozenset[str]) -> dict[str, Any]:
    """``options`` less the ``optional`` keys that ``name``'s factory does not take.

    Options outside ``optional`` always pass (a wrong one then fails loudly in the factory); a factory
    with ``**kwargs``, no factory, or one without a readable signature keeps every option.
    """
    factory = get_factory(name)
    if factory is None:
        return dict(options)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params or k not in optional}


def create_detector(name: str, **options: Any) -> Detector:
    """Build a detector by registry name (zero-shot or unfitted), e.g. ``create_detector("winclip", ...)``.

    Raises ``KeyError`` when ``name`` has no factory (fitted detectors load from an artifact instead).
    """
    factory = get_factory(name)
    if factory is None:
        raise KeyError(
            f"no detector factory named {name!r}; known: {sorted(_FACTORIES)}. Fitted detectors load from an "
            "artifact URI instead (a folder with config.json)"
        )
    return factory(**options)


def create_preprocessor(name: str, header: ArtifactHeader | None = None, **options: Any) -> Preprocess | None:
    """The registered model-free preprocessor for ``name`` with ``options``, or ``None`` if there is none.

    With ``header`` (an artifact's, :func:`read_header`), the one built from it
    (:func:`preprocessor_from_header`); ``options`` are then ignored.
    """
    import_builtin_detectors()
    if header is not None:
        return preprocessor_from_header(header)
    factory = _PREPROCESSORS.get(name)
    return None if factory is None else factory(**options)


def load_detector(uri: str, device: str | None = None) -> Detector:
    """Load any registered detector from its artifact folder ``uri`` onto ``device`` (default: CUDA if
    available). A format ``1.1`` artifact's header must agree with the detector it loads (categories,
    modalities, thresholds, preprocessing). Raises ``ValueError`` when the artifact names an unregistered
    detector or its header disagrees, and what :func:`adray.detectors.artifact.read_artifact_config` and
    the detector's ``load`` raise."""
    import_builtin_detectors()
    doc = read_artifact_config(uri)
    name = doc.get("detector")
    if name not in _CLASSES:
        raise ValueError(f"artifact {uri} names detector {name!r}, not one of {sorted(_CLASSES)}")
    detector = _CLASSES[name].load(uri, device=device)
    spec = getattr(detector, "preprocessing", None)
    if doc.get("modalities") is not None and isinstance(spec, Preprocessing):
        check_header_matches(ArtifactHeader.from_doc(uri, doc), detector, spec)
    return detector
