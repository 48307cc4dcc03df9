"""Frozen timm feature extractors (CNN stages or ViT blocks), weights resolved through ``weights.py``.

``create_timm_backbone("tf_efficientnet_b6", "pretrained", pretrained_tag="aa_in1k", out_indices=(1, 2, 3))``
returns an ``nn.Module`` in eval mode with every parameter frozen. Three weight sources:

- ``"pretrained"``: the pinned ``arch.tag`` (``name`` may already carry the tag; ``pretrained_tag``
  overrides it). Loaded from the Hugging Face cache; offline with nothing cached raises
  :class:`~adray.backbones.weights.WeightsUnavailableError` naming the fixes.
- a weights file (local or object storage, ``.safetensors``/``.pt``/``.pth``/``.bin``): timm's
  ``pretrained_cfg_overlay=dict(file=...)``, the same code path as hub weights.
- ``"random"``: random initialisation under ``seed``, so the same ``(name, seed)`` always rebuilds the
  same backbone (artifacts record the seed, a file's sha256, or the hub tag: see :func:`backbone_record`).

The module keeps timm's ``feature_info`` (``channels()``, ``reduction()``) and ``pretrained_cfg``
(input ``mean``/``std``) when the model has them; :func:`input_normalisation` reads the latter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adray.backbones.weights import (
    WeightsUnavailableError,
    file_sha256,
    offline_help,
    parse_weights,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    """
    import timm

    spec = parse_weights(weights)
    kwargs: dict[str, Any] = dict(timm_kwargs)
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    arch = resolve_model_name(name, pretrained_tag) if spec.kind == "pretrained" else _arch(name)
    if spec.kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(arch, pretrained=False, **kwargs)
    elif spec.kind == "file":
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": spec.path}, **kwargs)
    else:
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except (OSError, RuntimeError, ValueError) as e:  # hub / cache misses surface as OSError subclasses
            base, _, tag = arch.partition(".")
            raise WeightsUnavailableError(offline_help(base, tag)) from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve_model_name(name: str, pretrained_tag: str | None = None) -> str:
    """``arch.tag`` with the tag pinned: explicit ``pretrained_tag``, else the one in ``name``, else timm's
    current default tag for the architecture (recorded so later timm releases cannot change it silently)."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    tag = pretrained_tag or tag
    if not tag:
        cfg = get_pretrained_cfg(arch)
        tag = getattr(cfg, "tag", None) if cfg is not None else None
        if not tag:
            raise WeightsUnavailableError(
                f"timm model {arch!r} has no pretrained weights; use --weights random|PATH"
            )
    return f"{arch}.{tag}"


def _arch(name: str) -> str:
    from timm.models import split_model_name_tag

    return split_model_name_tag(name)[0]


def backbone_record(
    name: str, weights: str, *, pretrained_tag: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """What an artifact stores to rebuild the identical backbone: the pinned tag, a file's sha256, or the seed."""
    spec = parse_weights(weights)
    if spec.kind == "pretrained":
        return {"name": resolve_model_name(name, pretrained_tag), "weights": "pretrained"}
    if spec.kind == "file":
        return {"name": _arch(name), "weights": weights, "sha256": file_sha256(spec.path or "")}
    return {"name": _arch(name), "weights": "random", "seed": int(seed)}


def backbone_from_record(record: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Rebuild a backbone from :func:`backbone_record`'s output; a weights file must still match its sha256."""
    weights = record["weights"]
    if weights not in ("pretrained", "random"):
        spec = parse_weights(weights)
        digest = file_sha256(spec.path or "")
        if digest != record.get("sha256"):
            raise WeightsUnavailableError(
                f"backbone weights file {weights!r} has sha256 {digest[:12]}..., but the artifact was fitted with "
                f"{str(record.get('sha256'))[:12]}...; provide the original weights file"
            )
    return create_timm_backbone(record["name"], weights, seed=int(record.get("seed", 0)), **kwargs)


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
