"""Running open_clip's towers for WinCLIP: the text tower cut to the positions that matter, and the ViT
image tower's transformer run block by block (either sequence layout, bf16 weight copies and oneDNN's fused
linear+GELU where the CPU has native bf16). Loading the model is :mod:`adray.backbones.open_clip`'s job,
which re-exports every name here.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

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
