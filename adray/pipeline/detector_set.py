"""The detectors of one :class:`~adray.pipeline.spec.DetectorSpec`, built lazily per category.

A fitted artifact is one detector for every category it knows. A registry detector (zero-shot WinCLIP)
is built once per category, with ``class_name`` = the category (or the run's ``--class-name``), because
its prompts name the object; factories share the heavy backbone between instances, so a new category
costs a text encoding, not a model load. The same object serves the driver (versions, applicability),
the CPU decode stage (``preprocess``) and the scoring actors (``score``), through the Detector contract
only.

For a fitted artifact the driver and the decode stage read only its header
(:func:`adray.detectors.registry.read_header`: detector, version, categories, modalities, threshold,
preprocessing); only the scoring actors load weights (:meth:`DetectorSet.for_category`). An artifact
written before headers whose preprocessing the header cannot say (format ``1.0`` BGAD / M3DM) is
preprocessed by the loaded detector, as before.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from adray.detectors.base import Detector, create_detector, load_detector
from adray.detectors.header import ArtifactHeader, MissingHeaderError
from adray.detectors.registry import create_preprocessor, factory_accepts, read_header
from adray.pipeline.spec import DetectorSpec, load_plugins

#: Placeholder category for registry detectors when a run gives no category (never stored).
ANY_CATEGORY = "object"


_MISSING = object()


class DetectorSet:
    """Per-category detector instances of one spec, created on first use and cached."""

    def __init__(self, spec: DetectorSpec, loader: Callable[[str | None], Detector] | None = None) -> None:
        self.spec = spec
        self._by_key: dict[str, Detector] = {}
        self._preprocessor: Any = _MISSING  # the model-free preprocessor, resolved on first use
        self._header: Any = _MISSING  # an artifact's header, read on first use (no weights)
        self._loader = loader

    # ------------------------------------------------------------------------------ instances

    def for_category(self, category: str | None) -> Detector:
        if self.spec.is_artifact:
            key = "*"
        else:  # one instance per prompt class, and per category when categories have their own references
            key = f"{self.spec.class_name or category or ANY_CATEGORY}|{category if self.spec.references else ''}"
        det = self._by_key.get(key)
        if det is None:
            det = self._loader(category) if self._loader else self._build(category)
            self._by_key[key] = det
        return det

    def header(self) -> ArtifactHeader | None:
        """A fitted artifact's header, read once without weights; ``None`` for by-name detectors and for
        a format ``1.0`` artifact of a detector without a legacy header reader (then the model tells)."""
        if self._header is _MISSING:
            self._header = None
            if self.spec.is_artifact and self._loader is None:
                load_plugins(self.spec.plugins)
                try:
                    self._header = read_header(self.spec.ref)
                except MissingHeaderError:
                    pass
        return self._header

    def preprocess(self, category: str | None, sample: dict[str, Any]) -> dict[str, Any]:
        """The detector's ``preprocess`` for ``category``, built without weights where possible: from a
        fitted artifact's header, or the registered model-free preprocessor of a by-name detector
        (WinCLIP), so CPU decode tasks never load a model. Otherwise the loaded detector's."""
        if self._preprocessor is _MISSING:
            self._preprocessor = self._model_free_preprocessor()
        if self._preprocessor is not None:
            return self._preprocessor(sample)
        return self.for_category(category).preprocess(sample)

    def _model_free_preprocessor(self) -> Any:
        if self.spec.is_artifact:
            header = self.header()
            return None if header is None else create_preprocessor(header.detector, header=header)
        load_plugins(self.spec.plugins)
        options = dict(self.spec.option_dict())
        options.setdefault("weights", self.spec.weights)
        return create_preprocessor(self.spec.ref, **options)

    def prototype(self) -> Detector:
        """Any one instance (the first built): name, modalities and categories do not vary by category."""
        if self._by_key:
            return next(iter(self._by_key.values()))
        return self.for_category(None)

    def _build(self, category: str | None) -> Detector:
        spec = self.spec
        load_plugins(spec.plugins)
        if spec.is_artifact:
            return load_detector(spec.ref, device=spec.device)
        options: dict[str, Any] = dict(spec.option_dict())
        options.setdefault("weights", spec.weights)
        options["class_name"] = spec.class_name or category or ANY_CATEGORY
        refs = spec.reference_uris(category or "")
        if refs:
            options["reference_images"] = [_read_reference(u) for u in refs]
        if spec.device is not None:
            options.setdefault("device", spec.device)
        accepted = _accepted(spec.ref, options)
        if refs and "reference_images" not in accepted:
            raise ValueError(
                f"detector {spec.ref!r} takes no reference_images, so it cannot run k-shot; drop --shots"
            )
        return create_detector(spec.ref, **accepted)

    # ------------------------------------------------------------------------------ facts

    @property
    def name(self) -> str:
        header = self.header()
        return header.detector if header is not None else str(type(self.prototype()).name)

    @property
    def needs_xyz(self) -> bool:
        header = self.header()
        modalities = header.modalities if header is not None else self.prototype().modalities
        return "xyz" in tuple(modalities)

    def applies_to(self, category: str, has_point_cloud: bool) -> bool:
        """Whether this detector scores an item: its categories (None = any) and its modalities.

        A registry detector is asked through its instance for the item's category (zero-shot WinCLIP
        built for "bottle" knows "bottle"); with a pinned ``--class-name`` the person has named the
        object for every item, so every category applies. A fitted artifact answers from its header.
        """
        if self.spec.only_categories and category not in self.spec.only_categories:
            return False  # --detector auto gave this category to another detector
        header = self.header()
        if header is not None:
            if "xyz" in header.modalities and not has_point_cloud:
                return False
            return header.categories is None or category in header.categories
        det = self.for_category(category)
        if "xyz" in tuple(det.modalities) and not has_point_cloud:
            return False
        if not self.spec.is_artifact and self.spec.class_name:
            return True
        cats = det.categories
        return cats is None or category in cats

    def version(self, category: str | None) -> str:
        header = self.header()
        return header.version if header is not None else str(self.for_category(category).version)

    def threshold(self, category: str | None) -> float | None:
        header = self.header()
        t = header.threshold if header is not None else self.for_category(category).threshold
        return None if t is None else float(t)


def _read_reference(uri: str) -> Any:
    """A WinCLIP+ reference image through the one reader (:func:`adray.io.samples.read_sample`)."""
    from adray.io.samples import read_sample

    return read_sample({"uri": uri}).raise_for_status().image


#: options a run offers every registry detector; a factory that does not take one never sees it
_OFFERED = frozenset({"device", "reference_images", "target_fpr", "target_pixel_fpr"})


def _accepted(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Drop options the factory does not take (``device``/``reference_images`` are offered, not imposed)."""
    return factory_accepts(name, options, _OFFERED)


@functools.lru_cache(maxsize=8)
def _cached(spec_json: str) -> DetectorSet:
    return DetectorSet(spec_from_json(spec_json))


def cached_detector_set(spec: DetectorSpec) -> DetectorSet:
    """One :class:`DetectorSet` per spec per process (Ray reuses worker processes across tasks)."""
    return _cached(spec_to_json(spec))


def spec_to_json(spec: DetectorSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def spec_from_json(text: str) -> DetectorSpec:
    return DetectorSpec.from_dict(json.loads(text))
