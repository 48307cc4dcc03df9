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
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


# -------------------------------------------------------------------------------------------- text tower


@torch.inference_mode()
def encode_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` (unnormalised), computed only over the positions that matter.

    For open_clip's built-in CLIP text tower (causal mask, pooling at the end-of-text token, which has the
    highest id) the output at the end token depends only on the positions before it, so the sequence is
    cut after the longest prompt's end token. Any other text tower falls back to ``encode_text``.
    """
    import open_clip

    simple = (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
        and model.positional_embedding.shape[0] == tokens.shape[1]
    )
    if not simple:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


# -------------------------------------------------------------------------------------------- image tower


def check_vit(model: nn.Module) -> nn.Module:
    """The model's open_clip ``VisionTransformer``; raises for towers WinCLIP's token windows cannot use."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"WinCLIP needs an open_clip VisionTransformer image tower, got {type(visual).__name__}; "
            "choose a ViT CLIP such as ViT-B-16-plus-240"
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError(
            "WinCLIP needs a ViT pooled by its class token (no attentional pooler, pool_type 'tok')"
        )
    if getattr(visual, "final_ln_after_pool", False):
        raise ValueError("WinCLIP expects ln_post before pooling (final_ln_after_pool=False)")
    return visual


def wants_batch_first(transformer: nn.Module) -> bool:
    """Whether ``transformer(x)`` takes ``[N, L, D]``.

    open_clip >= 2.26 gives ``Transformer`` a ``batch_first`` attribute and transposes inside ``forward``
    when it is False, so it always takes NLD; older versions have no attribute and take LND. Permuting to
    LND for a batch-first transformer silently mixes windows (every window gets the same embedding).
    """
    if hasattr(transformer, "batch_first"):
        return True
    return bool(getattr(transformer.resblocks[0].attn, "batch_first", False))


def run_transformer(transformer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run an open_clip transformer on NLD tokens whatever the installed version's layout."""
    if wants_batch_first(transformer):
        return transformer(x)
    return transformer(x.transpose(0, 1)).transpose(0, 1)


def run_blocks_mixed(
    transformer: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """The transformer on NLD tokens with an fp32 residual stream and ``dtype`` matmuls/attention.

    What autocast does, minus its overheads on CPU (per-op casts, and an attention kernel slow on the
    5- and 10-token window sequences). Reads open_clip's standard ``ResidualAttentionBlock`` weights
    (checked by :func:`supports_mixed_blocks`); with ``dtype=float32`` it equals ``transformer(x)`` (tested).
    For bf16 on CPU the MLP's first linear and its exact GELU run as one oneDNN kernel where oneDNN has
    bf16 kernels (the GELU pass over the 4x-wide hidden layer otherwise costs about a fifth of the linear
    itself). bf16 on a CPU without native bf16 runs but is far slower than fp32 (:mod:`adray.cpu`).
    """
    x = x.float()
    for block in transformer.resblocks:
        n, length, width = x.shape
        heads = block.attn.num_heads
        h = block.ln_1(x).to(dtype)
        qkv = nn.functional.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, width)
        x = x + block.ls_1(block.attn.out_proj(attn).float())
        x = x + block.ls_2(_mlp(block.mlp, block.ln_2(x).to(dtype)).float())
    return x


def _mlp(mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``mlp(h)``; bf16 CPU inputs with open_clip's (c_fc, exact GELU, c_proj) MLP use a fused linear+GELU
    where oneDNN has bf16 kernels for this CPU (:func:`fused_linear_gelu_available`), else the plain MLP."""
    act = getattr(mlp, "gelu", None)
    fusable = (
        h.dtype == torch.bfloat16
        and h.device.type == "cpu"
        and fused_linear_gelu_available()
        and isinstance(mlp, nn.Sequential)
        and len(mlp) == 3
        and type(act) is nn.GELU
        and act.approximate == "none"
        and isinstance(getattr(mlp, "c_fc", None), nn.Linear)
        and isinstance(getattr(mlp, "c_proj", None), nn.Linear)
        and mlp.c_fc.weight.dtype == torch.bfloat16
    )
    if not fusable:
        return mlp(h)
    hidden = torch.ops.mkldnn._linear_pointwise(h, mlp.c_fc.weight, mlp.c_fc.bias, "gelu", [], "none")
    return mlp.c_proj(hidden)


_HAS_LINEAR_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)


def fused_linear_gelu_available() -> bool:
    """Whether oneDNN's fused bf16 linear+GELU (``torch.ops.mkldnn._linear_pointwise``) runs on this CPU.

    It needs the op in this torch build and oneDNN bf16 kernels, i.e. AVX-512 or better and not capped
    below it by ``ONEDNN_MAX_CPU_ISA`` (:mod:`adray.cpu`); on AVX2 oneDNN cannot create the primitive.
    """
    from adray.cpu import cpu_capabilities

    return _HAS_LINEAR_POINTWISE and cpu_capabilities().onednn_bf16


def supports_mixed_blocks(transformer: nn.Module) -> bool:
    """Whether :func:`run_blocks_mixed` can run ``transformer`` (open_clip's default blocks, no cross-attn)."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = getattr(transformer, "resblocks", None)
    return bool(blocks) and all(
        type(b) is ResidualAttentionBlock
        and not hasattr(b, "ln_1_kv")
        and isinstance(b.attn, nn.MultiheadAttention)
        and b.attn.in_proj_weight is not None
        and b.attn.bias_k is None
        for b in blocks
    )


_BF16_COPIES: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def bf16_matmul_weights(transformer: nn.Module) -> nn.Module:
    """A copy of ``transformer`` with bf16 matrix weights and fp32 norms, made once per transformer.

    Under CPU autocast the matmuls run in bf16 (AMX) either way; holding the weights in bf16 saves the
    per-call weight casts. Only worth it on CPUs with native bf16 (:mod:`adray.cpu`). Norms stay fp32
    because CPU layer_norm rejects mixed parameter dtypes.
    """
    if transformer in _BF16_COPIES:
        return _BF16_COPIES[transformer]
    shadow = copy.deepcopy(transformer)
    for module in shadow.modules():
        if isinstance(module, nn.LayerNorm):
            continue
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(param.detach().to(torch.bfloat16), requires_grad=False))
    _BF16_COPIES[transformer] = shadow
    return shadow
