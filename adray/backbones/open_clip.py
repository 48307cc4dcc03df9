"""open_clip models for adray: loading by name and weights spec, one copy per process, and a few fast paths.

- :func:`load_clip` builds an open_clip model from ``(model_name, weights, pretrained_tag, device)`` once per
  process (``functools.lru_cache``), so the WinCLIP detectors of several categories in one Ray actor share
  it. Weights are resolved as in :mod:`adray.backbones.weights`: the hub weights of a pretrained tag
  (Hugging Face cache, honouring ``HF_HUB_OFFLINE=1``; open_clip's own file names, e.g.
  ``timm/vit_base_patch16_plus_clip_240.laion400m_e31`` with ``open_clip_model.safetensors`` before
  ``open_clip_pytorch_model.bin``), a local or object-storage file, or ``random`` (explicit; seeded, so a
  reloaded detector scores identically). Without a tag, a model takes its own default
  (:func:`resolve_pretrained_tag`): ``laion400m_e31`` for ``ViT-B-16-plus-240`` (WinCLIP's), otherwise the
  first tag open_clip lists for it; the tag is always recorded. :meth:`ClipBackbone.weights_record` says
  which file was read (hub id, file, snapshot revision, sha256).
- ``weights_id`` identifies the weights for detector versions without hashing a 200M-parameter state dict
  on every load: the tag for pretrained weights, the file's sha256 for files (hashed once per process), and
  for random weights the seed plus a hash of the model config and the open_clip/torch versions (the init
  code and the RNG stream are what make random weights reproducible).
- :func:`encode_text` runs the text tower on the prompt tokens only up to the longest prompt: with CLIP's
  causal mask and end-of-text pooling, positions after the end token cannot change the result, so this
  equals ``model.encode_text`` (tested) at a fraction of the cost.
- :func:`bf16_matmul_weights` gives a transformer copy whose matrix weights are bf16 (LayerNorms stay fp32)
  for CPU autocast, which otherwise re-casts every weight on every call.
- :func:`register_tiny_clip` adds ``adray-tiny-clip``, a 2-layer ViT/16 CLIP for tests and demos that runs
  through exactly the same code paths as ViT-B-16-plus-240.

The tower runners (:func:`encode_text`, :func:`run_blocks_mixed`, :func:`bf16_matmul_weights`, ...) live in
:mod:`adray.backbones.clip_towers` and are importable from here as before.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adray.backbones.clip_towers import (  # noqa: F401 - re-exported: the public home stays here
    _BF16_COPIES,
    _HAS_LINEAR_POINTWISE,
    _mlp,
    bf16_matmul_weights,
    check_vit,
    encode_text,
    fused_linear_gelu_available,
    run_blocks_mixed,
    run_transformer,
    supports_mixed_blocks,
    wants_batch_first,
)
from adray.backbones.weights import (
    WeightsUnavailableError,
    cached_file_sha256,
    hub_file_record,
    offline_help,
    parse_weights,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_TAG = "laion400m_e31"
RANDOM_SEED = 0
TINY_CLIP = "adray-tiny-clip"
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 96, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class ClipBackbone:
    """A loaded open_clip model with what detectors record about it."""

    model: nn.Module
    tokenizer: Any
    model_name: str
    weights: str  # the spec as given: "pretrained", "random" or a path/URL
    pretrained_tag: str
    weights_id: str  # see module docstring
    device: torch.device
    hub_id: str | None = None  # pretrained: the Hugging Face repo the weights came from
    weights_path: str | None = None  # the local file read (hub cache snapshot or the given file)

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        import open_clip

        return dict(open_clip.get_model_preprocess_cfg(self.model))

    @property
    def spec(self) -> dict[str, str]:
        return {
            "model_name": self.model_name,
            "weights": self.weights,
            "pretrained_tag": self.pretrained_tag,
            "weights_id": self.weights_id,
        }

    def weights_record(self) -> dict[str, Any]:
        """What an artifact records about the weights loaded: :attr:`spec` plus, for hub or file weights,
        the hub id, file name, snapshot revision and sha256 (hashed once per process)."""
        record: dict[str, Any] = dict(self.spec)
        if self.weights_path or self.hub_id:
            record.update(hub_file_record(self.hub_id, self.weights_path))
        return record


def register_tiny_clip() -> str:
    """Register the ``adray-tiny-clip`` open_clip config (idempotent) and return its name.

    The config goes into open_clip's in-memory registry (``open_clip.factory._MODEL_CONFIGS``, which
    ``add_model_config`` fills from files and keeps across its rescans); no file is written, so nothing in
    a shared temp folder can be redirected or swapped. Should a future open_clip lack that registry, the
    JSON is written to a private folder from ``tempfile.mkdtemp`` (mode 0700, a fresh name per process).
    """
    import open_clip
    from open_clip import factory

    if TINY_CLIP in open_clip.list_models():
        return TINY_CLIP
    registry = getattr(factory, "_MODEL_CONFIGS", None)
    if isinstance(registry, dict):
        registry[TINY_CLIP] = json.loads(json.dumps(TINY_CLIP_CONFIG))  # a copy open_clip may not mutate ours
        if TINY_CLIP in open_clip.list_models():
            return TINY_CLIP
    folder = tempfile.mkdtemp(prefix="adray-open-clip-")
    path = os.path.join(folder, f"{TINY_CLIP}.json")
    with open(path, "x") as f:
        json.dump(TINY_CLIP_CONFIG, f)
    open_clip.add_model_config(path)
    return TINY_CLIP


def load_clip(
    model_name: str = DEFAULT_MODEL,
    weights: str = "pretrained",
    pretrained_tag: str | None = None,
    device: str | torch.device | None = None,
) -> ClipBackbone:
    """The open_clip model for ``(model_name, weights, pretrained_tag, device)``, loaded once per process.

    ``pretrained_tag=None`` takes the model's default tag (:func:`resolve_pretrained_tag`). Raises
    :class:`WeightsUnavailableError` (naming the ways to provide the weights) when pretrained weights are
    neither cached nor downloadable, and ``ValueError`` for an unknown model or tag.
    """
    from adray.backbones.device import pick_device

    dev = pick_device(str(device) if device is not None else None)
    tag = resolve_pretrained_tag(model_name, pretrained_tag)
    return _load_clip_cached(model_name, weights or "pretrained", tag, str(dev))


def resolve_pretrained_tag(model_name: str, pretrained_tag: str | None = None) -> str:
    """The open_clip tag to use: ``pretrained_tag`` when given, else ``laion400m_e31`` for
    ``ViT-B-16-plus-240`` (WinCLIP's weights), else the first tag open_clip lists for the model (``""`` when
    it has none, e.g. ``adray-tiny-clip``). Not validated here: only pretrained weights need a known tag."""
    if pretrained_tag:
        return pretrained_tag
    if model_name == DEFAULT_MODEL:
        return DEFAULT_TAG
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    return tags[0] if tags else ""


@functools.lru_cache(maxsize=8)
def _load_clip_cached(model_name: str, weights: str, pretrained_tag: str, device: str) -> ClipBackbone:
    import open_clip

    if model_name == TINY_CLIP:
        register_tiny_clip()
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"unknown open_clip model {model_name!r}; choose one of open_clip.list_models() "
            f"(e.g. {DEFAULT_MODEL!r}) or {TINY_CLIP!r} for tests"
        )
    spec = parse_weights(weights)
    hub_id = path = None
    if spec.kind == "random":
        # fork_rng keeps the caller's RNG stream untouched; the fixed seed makes "random" reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = open_clip.create_model(model_name, pretrained=None)
    elif spec.kind == "file":
        model = open_clip.create_model(model_name, pretrained=spec.path)
        path = spec.path
    else:
        hub_id, path = pretrained_source(model_name, pretrained_tag)
        model = _create_pretrained(model_name, pretrained_tag)
    weights_id = weights_id_for(model_name, weights, pretrained_tag)
    model = model.to(torch.device(device)).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    log.info("loaded open_clip %s (%s%s) on %s", model_name, weights_id, f", {path}" if path else "", device)
    return ClipBackbone(
        model, tokenizer, model_name, weights, pretrained_tag, weights_id, torch.device(device), hub_id, path
    )


def pretrained_source(model_name: str, tag: str) -> tuple[str | None, str]:
    """``(hub id, local file)`` of a pretrained tag's weights, found by open_clip's own
    ``download_pretrained`` (the call ``create_model`` makes), so it names the file that is loaded.

    Raises ``ValueError`` for an unknown tag and :class:`WeightsUnavailableError` when the file is
    neither cached nor downloadable.
    """
    from open_clip.pretrained import download_pretrained

    cfg = _pretrained_cfg(model_name, tag)
    hub_id = _hub_id(cfg)
    try:
        path = download_pretrained(cfg)
    except Exception as e:  # hub/URL errors vary by library version; all mean "weights not reachable"
        raise WeightsUnavailableError(offline_help(model_name, tag, hub_id)) from e
    if not path:
        raise WeightsUnavailableError(offline_help(model_name, tag, hub_id))
    return hub_id, path


def _hub_id(cfg: dict[str, Any]) -> str | None:
    """open_clip writes ``org/name/`` (default file names) or ``org/name/file``: the repo is ``org/name``."""
    hub = cfg.get("hf_hub") or ""
    return (hub.rstrip("/") if hub.endswith("/") else os.path.dirname(hub)) or None


def _pretrained_cfg(model_name: str, tag: str) -> dict[str, Any]:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if tag not in tags:
        raise ValueError(
            f"open_clip has no pretrained tag {tag!r} for {model_name!r}; known tags: {tags}. Pass "
            "--weights /path/to/file for other weights"
        )
    return open_clip.get_pretrained_cfg(model_name, tag)


def _create_pretrained(model_name: str, tag: str) -> nn.Module:
    import open_clip

    cfg = _pretrained_cfg(model_name, tag)
    try:
        return open_clip.create_model(model_name, pretrained=tag, require_pretrained=True)
    except Exception as e:  # hub/URL errors vary by library version; all mean "weights not reachable"
        raise WeightsUnavailableError(offline_help(model_name, tag, _hub_id(cfg))) from e


def weights_id_for(model_name: str, weights: str = "pretrained", pretrained_tag: str | None = None) -> str:
    """The identity of a weights spec recorded in detector versions (see module docstring)."""
    spec = parse_weights(weights)
    if spec.kind == "random":
        return "random:" + _random_weights_id(model_name)
    if spec.kind == "file":
        return "sha256:" + cached_file_sha256(spec.path or "")
    return f"open_clip:{model_name}:{resolve_pretrained_tag(model_name, pretrained_tag)}"


def _random_weights_id(model_name: str) -> str:
    import open_clip

    if model_name == TINY_CLIP:
        register_tiny_clip()
    doc = {
        "seed": RANDOM_SEED,
        "config": open_clip.get_model_config(model_name),
        "open_clip": open_clip.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"seed{RANDOM_SEED}:{digest}"
