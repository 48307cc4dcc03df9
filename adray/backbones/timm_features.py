"""Frozen timm feature extractors (CNN stages or ViT blocks), weights resolved through ``weights.py``.

``create_timm_backbone("tf_efficientnet_b6.aa_in1k", "pretrained", out_indices=(1, 2, 3))`` returns an
``nn.Module`` in eval mode with every parameter frozen. Names and tags (:func:`resolve_model_name`): a tag
in the name (``resnet18.a1_in1k``) wins; ``pretrained_tag`` applies to a bare name and must not contradict
a tag in the name (:class:`~adray.backbones.weights.BackboneNameError`); a bare name with neither takes
the model's own default tag as timm defines it (its first-listed pretrained config). Three weight sources:

- ``"pretrained"``: the hub file of that ``arch.tag`` (``timm/<arch>.<tag>``, ``model.safetensors`` before
  ``pytorch_model.bin``, as timm looks them up), read from the Hugging Face cache and loaded exactly as a
  weights file is, so ``HF_HUB_OFFLINE=1`` with a staged cache gives the same model as ``weights=<that
  file>``; offline with nothing cached raises :class:`~adray.backbones.weights.WeightsUnavailableError`.
- a weights file (local or object storage, ``.safetensors``/``.pt``/``.pth``/``.bin``): timm's
  ``pretrained_cfg_overlay=dict(file=...)``, with the pretrained config (input mean/std) of the named tag.
- ``"random"``: random initialisation under ``seed``, so the same ``(name, seed)`` always rebuilds the
  same backbone.

:func:`load_backbone` also returns what was loaded (``name.tag``, hub id, file, snapshot revision, sha256,
or the seed): artifacts record it, and a rebuild from a record with a sha256 checks the file still has it.
The module keeps timm's ``feature_info`` (``channels()``, ``reduction()``) and ``pretrained_cfg``
(input ``mean``/``std``) when the model has them; :func:`input_normalisation` reads the latter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adray.backbones.weights import (
    BackboneNameError,
    WeightsUnavailableError,
    cached_file_sha256,
    hub_file_record,
    hub_file_sha256,
    hub_weights_file,
    offline_help,
    parse_weights,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# timm's hub file names: safetensors first, then the pickle it replaces (timm.models._hub)
_SAFE_ALTERNATIVES = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}


def create_timm_backbone(
    name: str,
    weights: str,
    *,
    features_only: bool = True,
    out_indices: Sequence[int] | None = None,
    pretrained_tag: str | None = None,
    seed: int = 0,
    **timm_kwargs: Any,
) -> nn.Module:
    """A frozen timm model in eval mode; ``features_only`` returns a list of stage maps per forward.

    ``weights`` is ``"pretrained" | "random" | PATH`` (see :mod:`adray.backbones.weights`); ``seed`` only
    matters for ``"random"``. Extra keyword arguments go to ``timm.create_model`` (e.g. ``img_size``).
    Raises :class:`BackboneNameError` for an unknown or contradicting tag and
    :class:`WeightsUnavailableError` when pretrained weights are neither cached nor downloadable.
    """
    record = backbone_record(name, weights, pretrained_tag=pretrained_tag, seed=seed)
    return load_backbone(record, features_only=features_only, out_indices=out_indices, **timm_kwargs)[0]


def resolve_model_name(name: str, pretrained_tag: str | None = None) -> str:
    """``arch.tag`` naming one set of pretrained weights: the tag in ``name``, else ``pretrained_tag``, else
    timm's default tag for the architecture (recorded, so later timm releases cannot change it silently).

    Raises :class:`BackboneNameError` when the two tags differ or timm has no such tag, and
    :class:`WeightsUnavailableError` when the architecture has no pretrained weights at all.
    """
    from timm.models import get_pretrained_cfg

    arch, tag = _split(name, pretrained_tag)
    if tag:
        _check_tag(arch, tag)
        return f"{arch}.{tag}"
    cfg = get_pretrained_cfg(arch)
    tag = getattr(cfg, "tag", None) if cfg is not None else None
    if not tag:
        raise WeightsUnavailableError(
            f"timm model {arch!r} has no pretrained weights; use --weights random|PATH"
        )
    return f"{arch}.{tag}"


def check_model_name(name: str, pretrained_tag: str | None = None) -> None:
    """Raise :class:`BackboneNameError` unless ``name`` (with ``pretrained_tag``) is a timm architecture with
    at most one, known, tag: the check a command makes before it starts any work."""
    import timm

    arch, tag = _split(name, pretrained_tag)
    if not timm.is_model(arch):
        raise BackboneNameError(f"unknown timm model {arch!r}; see timm.list_models() for the names")
    if tag:
        _check_tag(arch, tag)


def check_pretrained_available(name: str, pretrained_tag: str | None = None) -> str | None:
    """Make sure the pretrained weights of ``name`` can be had here, before any work starts (a driver's
    check ahead of its Ray workers): the local path of the hub file (downloaded into the hub cache when
    the hub can be reached), or None when timm loads these weights its own way (not checked here).

    Raises :class:`BackboneNameError` / :class:`WeightsUnavailableError` as :func:`load_backbone` would.
    """
    full = resolve_model_name(name, pretrained_tag)
    hub_id, filenames = _hub_location(full)
    if hub_id is None or filenames is None:
        return None
    arch, _, tag = full.partition(".")
    return hub_weights_file(hub_id, filenames, model=arch, tag=tag)


def backbone_record(
    name: str, weights: str, *, pretrained_tag: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """What an artifact stores to rebuild the identical backbone, before loading it: the ``name.tag`` and
    hub id for pretrained weights, a file's sha256, or the seed. :func:`load_backbone` adds the hub file."""
    spec = parse_weights(weights)
    if spec.kind == "pretrained":
        full = resolve_model_name(name, pretrained_tag)
        return {"name": full, "weights": "pretrained", "hub_id": _hub_location(full)[0]}
    if spec.kind == "file":
        return {"name": _file_model_name(name, pretrained_tag), "weights": weights, "sha256": _sha256(spec)}
    return {"name": _random_model_name(name, pretrained_tag), "weights": "random", "seed": int(seed)}


def load_backbone(record: dict[str, Any], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build the frozen backbone a :func:`backbone_record` describes; returns it and the record completed
    with what was loaded (for pretrained weights: hub id, file, snapshot revision, sha256).

    A record with a ``sha256`` (weights file, or hub file recorded at fit time) must still match the file
    found, else :class:`WeightsUnavailableError` says which file to restore. ``kwargs`` as for
    :func:`create_timm_backbone` (``features_only``, ``out_indices``, timm keyword arguments).
    """
    weights = record["weights"]
    spec = parse_weights(weights)
    done = dict(record)
    if spec.kind == "random":
        return _create(record["name"], None, seed=int(record.get("seed", 0)), **kwargs), done
    if spec.kind == "file":
        _check_sha256(record, cached_file_sha256(spec.path or ""), f"backbone weights file {weights!r}")
        return _create(record["name"], spec.path, **kwargs), done
    name = record["name"]
    hub_id, filenames = _hub_location(name)
    if hub_id is None or filenames is None:  # url-only or custom-loaded weights: timm's own loader
        arch, _, tag = name.partition(".")
        try:
            return _create(name, "timm", **kwargs), done
        except (OSError, RuntimeError, ValueError) as e:
            raise WeightsUnavailableError(offline_help(arch, tag, hub_id)) from e
    arch, _, tag = name.partition(".")
    path = hub_weights_file(hub_id, filenames, model=arch, tag=tag)
    _check_sha256(record, hub_file_sha256(path), f"hub weights {hub_id} ({path})")
    done.update(hub_file_record(hub_id, path))
    return _create(name, path, **kwargs), done


def backbone_from_record(record: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Rebuild a backbone from :func:`backbone_record`'s output (see :func:`load_backbone`)."""
    return load_backbone(record, **kwargs)[0]


# ------------------------------------------------------------------------------------------ helpers


def _create(
    name: str,
    source: str | None,
    *,
    features_only: bool = True,
    out_indices: Sequence[int] | None = None,
    seed: int = 0,
    **timm_kwargs: Any,
) -> nn.Module:
    """``source``: None (random under ``seed``), ``"timm"`` (timm's own hub/URL loader) or a file path."""
    import timm

    kwargs: dict[str, Any] = dict(timm_kwargs)
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    if source is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, **kwargs)
    elif source == "timm":
        model = timm.create_model(name, pretrained=True, **kwargs)
    else:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": source}, **kwargs)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _split(name: str, pretrained_tag: str | None) -> tuple[str, str | None]:
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if tag and pretrained_tag and tag != pretrained_tag:
        raise BackboneNameError(
            f"backbone {name!r} names tag {tag!r} but --pretrained-tag is {pretrained_tag!r}; give the tag "
            f"once (e.g. --backbone {arch}.{tag} alone, or --backbone {arch} --pretrained-tag {pretrained_tag})"
        )
    return arch, (tag or pretrained_tag or None)


def _check_tag(arch: str, tag: str) -> None:
    import timm
    from timm.models import get_pretrained_cfg

    try:
        known = get_pretrained_cfg(f"{arch}.{tag}") is not None
    except RuntimeError:  # timm: "Invalid pretrained tag"
        known = False
    if not known:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise BackboneNameError(
            f"timm has no pretrained tag {tag!r} for {arch!r}; its tags: {tags or 'none'} (a bare name takes "
            f"the first); pass --weights PATH for other weights"
        )


def _file_model_name(name: str, pretrained_tag: str | None) -> str:
    """The name a weights file is loaded under: with its tag (so the input mean/std are that tag's), or
    bare for an architecture without pretrained configs."""
    try:
        return resolve_model_name(name, pretrained_tag)
    except WeightsUnavailableError:
        return _split(name, pretrained_tag)[0]


def _random_model_name(name: str, pretrained_tag: str | None) -> str:
    arch, tag = _split(name, pretrained_tag)
    if tag:
        _check_tag(arch, tag)
        return f"{arch}.{tag}"
    return arch


def _hub_location(name: str) -> tuple[str | None, list[str] | None]:
    """The hub id of ``arch.tag`` and the file names timm tries there, in order; ``(id, None)`` when timm
    loads these weights its own way (no hub id, or a custom loader)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id or getattr(cfg, "custom_load", False) or getattr(cfg, "source", None):
        return hub_id, None
    filename = getattr(cfg, "hf_hub_filename", None) or "pytorch_model.bin"
    if filename.endswith(".safetensors"):
        return hub_id, [filename]
    if filename in _SAFE_ALTERNATIVES:
        return hub_id, [_SAFE_ALTERNATIVES[filename], filename]
    return hub_id, [filename[:-4] + ".safetensors", filename] if filename.endswith(".bin") else [filename]


def _sha256(spec: Any) -> str:
    return cached_file_sha256(spec.path or "")


def _check_sha256(record: dict[str, Any], digest: str, what: str) -> None:
    expected = record.get("sha256")
    if expected and digest != expected:
        raise WeightsUnavailableError(
            f"{what} has sha256 {digest[:12]}..., but the artifact was fitted with {str(expected)[:12]}...; "
            "provide the original weights file"
        )


def input_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the backbone's weights expect, from its timm ``pretrained_cfg`` (ImageNet default)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return mean, std


def feature_channels(model: nn.Module) -> list[int]:
    """Channel count of each returned feature map (timm ``feature_info``)."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError("backbone has no feature_info; build it with features_only=True")
    return list(info.channels())
