"""Point-MAE encoder (Pang et al., ECCV 2022) as used by M3DM (Wang et al., CVPR 2023) for point features.

A cloud of N points is grouped into ``num_group`` centres by farthest point sampling, each with its
``group_size`` nearest neighbours (relative coordinates); a mini-PointNet turns each group into a token,
an MLP embeds the centre as position, a 12-block transformer runs over the tokens and the outputs of
blocks 4 / 8 / 12 (``fetch_idx``), each through the shared final LayerNorm, are concatenated (3 x 384 =
1152-d per centre).

Departures from the official M3DM code, on purpose:

- no CUDA-only extensions: farthest point sampling and kNN are plain torch (any device); FPS starts at
  point 0 like ``pointnet2_ops`` and is deterministic;
- (not a departure) BatchNorm in the mini-PointNet uses each cloud's own statistics (``bn_stats="sample"``,
  the default), as the official extractor does because it never calls ``.eval()``; the running statistics are neither
  used nor updated. ``bn_stats="running"`` is plain eval-mode BatchNorm, kept for artifacts built before
  (see ``docs/official-code/m3dm.md``);
- no DropPath: the official train-mode extractor applies stochastic depth at inference, so its features
  vary from run to run; ours are deterministic;
- checkpoints load by path with key remapping and *raise* on missing keys (the official loader uses
  ``strict=False`` and silently keeps random weights for a wrong file).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import ConfigDict
from torch import nn

from adray.config import Config, Real

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "base_model.", "MAE_encoder.", "model.")


class PointMAEConfig(Config):
    """Defaults are M3DM's inference settings (Point-MAE ShapeNet-55 encoder, 1024 groups of 128).
    A frozen pydantic :class:`~adray.config.Config`: an unknown ``bn_stats`` raises a one-line ConfigError."""

    model_config = ConfigDict(frozen=True)

    num_group: int = 1024
    group_size: int = 128
    trans_dim: int = 384
    encoder_dims: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: Real = 4.0
    qkv_bias: bool = False
    fetch_idx: tuple[int, ...] = (3, 7, 11)
    bn_stats: Literal["sample", "running"] = "sample"  # sample (official: per-cloud batch stats) | running

    @property
    def out_dim(self) -> int:
        return self.trans_dim * len(self.fetch_idx)

    @classmethod
    def tiny(cls) -> PointMAEConfig:
        """A test-sized encoder: 2 blocks of 32-d, both blocks concatenated (64-d); 256 groups of 32.

        The grouping keeps the official *overlap* for the ~1,400 object points of a 64 px synthetic scan:
        M3DM's 1024 x 128 over ~20-30k points covers each point ~4-7 times, 256 x 32 over ~1,400 ~6 times
        (the former 64 x 16 covered ~0.7: points between centres were in no group).
        """
        return cls(
            num_group=256,
            group_size=32,
            trans_dim=32,
            encoder_dims=32,
            depth=2,
            num_heads=2,
            fetch_idx=(0, 1),
        )


class PointCheckpointError(RuntimeError):
    """A Point-MAE checkpoint does not fit the encoder (missing keys or wrong shapes)."""


# ------------------------------------------------------------------------------------------ geometry


def farthest_point_sample(points: torch.Tensor, n_samples: int, start: int = 0) -> torch.Tensor:
    """Indices ``[n_samples]`` of a greedy farthest-point sample of ``points [N, 3]``, starting at ``start``.

    Deterministic; when ``n_samples > N`` the sample wraps around (points repeat), as grouping needs a
    fixed number of centres.
    """
    n = points.shape[0]
    idx = torch.empty(n_samples, dtype=torch.long, device=points.device)
    min_d = torch.full((n,), float("inf"), dtype=points.dtype, device=points.device)
    cur = int(start) % n
    for i in range(n_samples):
        idx[i] = cur
        d = ((points - points[cur]) ** 2).sum(dim=1)
        min_d = torch.minimum(min_d, d)
        cur = int(torch.argmax(min_d))
    return idx


def knn_indices(query: torch.Tensor, ref: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices ``[Q, k]`` of the ``k`` nearest ``ref [N, 3]`` points of each ``query [Q, 3]`` point."""
    k = min(k, ref.shape[0])
    out = [torch.cdist(q, ref).topk(k, dim=1, largest=False).indices for q in query.split(chunk)]
    return torch.cat(out)


def group_points(points: torch.Tensor, num_group: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS centres ``[G, 3]`` and neighbourhoods ``[G, K, 3]`` relative to their centre."""
    centers = points[farthest_point_sample(points, num_group)]
    nbr = knn_indices(centers, points, group_size)
    if nbr.shape[1] < group_size:  # fewer points than a group: repeat neighbours (max-pool ignores repeats)
        nbr = nbr[:, torch.arange(group_size, device=nbr.device) % nbr.shape[1]]
    return centers, points[nbr] - centers[:, None, :]


# ------------------------------------------------------------------------------------------ modules


class SampleBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose statistics are those of the current input (all groups x points of one
    cloud), as the official train-mode extractor computes them; the running statistics are kept (for
    checkpoints) but neither used nor updated. ``use_running=True`` is plain eval-mode BatchNorm."""

    def __init__(self, num_features: int, use_running: bool = False) -> None:
        super().__init__(num_features)
        self.use_running = use_running

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_running or self.training:
            return super().forward(x)
        return nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class MiniPointNet(nn.Module):
    """Group -> token: shared point MLP, max-pool, concat global feature, second MLP, max-pool."""

    def __init__(self, out_dim: int, bn_stats: str = "sample") -> None:
        super().__init__()
        running = bn_stats == "running"
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1),
            SampleBatchNorm1d(128, running),
            nn.ReLU(inplace=True),
            nn.Conv1d(128, 256, 1),
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1),
            SampleBatchNorm1d(512, running),
            nn.ReLU(inplace=True),
            nn.Conv1d(512, out_dim, 1),
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:  # [B, G, K, 3] -> [B, G, C]
        b, g, k, _ = groups.shape
        x = self.first_conv(groups.reshape(b * g, k, 3).transpose(1, 2))  # [BG, 256, K]
        glob = x.max(dim=2, keepdim=True).values
        x = self.second_conv(torch.cat([glob.expand(-1, -1, k), x], dim=1))
        return x.max(dim=2).values.reshape(b, g, -1)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (transformer MLP; also M3DM's fusion heads)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Blocks(nn.Module):  # a holder so parameter names read ``blocks.blocks.<i>`` as in Point-MAE
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class PointMAEEncoder(nn.Module):
    """``forward(points [N, 3]) -> (features [G, out_dim], centers [G, 3])`` for one cloud (valid points only)."""

    def __init__(self, config: PointMAEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PointMAEConfig()
        self.encoder = MiniPointNet(cfg.encoder_dims, cfg.bn_stats)
        self.reduce_dim = (
            nn.Linear(cfg.encoder_dims, cfg.trans_dim) if cfg.encoder_dims != cfg.trans_dim else None
        )
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, cfg.trans_dim))
        self.blocks = _Blocks(
            [_Block(cfg.trans_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(cfg.trans_dim)
        self.eval()

    @torch.no_grad()
    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
            raise ValueError(f"PointMAEEncoder wants a non-empty [N, 3] cloud, got {tuple(points.shape)}")
        cfg = self.config
        centers, groups = group_points(points.float(), cfg.num_group, cfg.group_size)
        tokens = self.encoder(groups[None])
        if self.reduce_dim is not None:
            tokens = self.reduce_dim(tokens)
        x = tokens
        pos = self.pos_embed(centers[None])
        fetched = []
        for i, block in enumerate(self.blocks.blocks):
            x = block(x + pos)
            if i in cfg.fetch_idx:
                fetched.append(self.norm(x))
        return torch.cat(fetched, dim=-1)[0], centers


# ------------------------------------------------------------------------------------------ weights


def build_point_mae(
    weights: str = "random", config: PointMAEConfig | None = None, seed: int = 0
) -> tuple[PointMAEEncoder, str]:
    """A Point-MAE encoder in eval mode and the tag to record: ``random`` (seeded) or a checkpoint path.

    There is no hub tag for Point-MAE: ``"pretrained"`` means "a checkpoint path is required".
    """
    from adray.backbones.weights import WeightsUnavailableError, file_sha256, parse_weights

    if weights == "pretrained":
        raise WeightsUnavailableError(
            "Point-MAE has no hub tag: download pointmae_pretrain.pth (Point-MAE ShapeNet-55 pretraining, linked "
            "from the Point-MAE and M3DM READMEs) and pass its path, e.g. --point-weights /path/pointmae_pretrain.pth "
            "(or --point-weights random for tests)"
        )
    spec = parse_weights(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PointMAEEncoder(config)
    if spec.kind == "random":
        return model.eval(), f"random:seed={seed}"
    load_point_mae_checkpoint(model, spec.path or "")
    return model.eval(), f"file:sha256={file_sha256(spec.path or '')[:16]}"


def load_point_mae_checkpoint(model: PointMAEEncoder, path: str) -> list[str]:
    """Load a Point-MAE / M3DM checkpoint into ``model``; returns the ignored (unexpected) keys.

    Accepts ``.pth``/``.pt`` (``{"base_model": ...}``, ``{"model": ...}`` or a bare state dict) and
    ``.safetensors``; strips ``module.``/``base_model.``/``MAE_encoder.`` prefixes. Raises
    :class:`PointCheckpointError` naming the missing or mis-shaped keys.
    """
    state = _read_state(path)
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if name.startswith(p):
                    name, changed = name[len(p) :], True
        mapped[name] = value
    missing = [k for k in own if k not in mapped]
    wrong = [
        f"{k} {tuple(mapped[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in mapped and mapped[k].shape != own[k].shape
    ]
    if missing or wrong:
        raise PointCheckpointError(
            f"checkpoint {path} does not fit PointMAEEncoder({model.config}): missing {len(missing)} keys "
            f"{missing[:8]}{'...' if len(missing) > 8 else ''}; wrong shapes {wrong[:8]}. Is it a Point-MAE "
            "pretraining checkpoint with the same trans_dim/depth?"
        )
    unexpected = sorted(k for k in mapped if k not in own)
    model.load_state_dict({k: mapped[k] for k in own})
    if unexpected:
        log.info(
            "Point-MAE checkpoint %s: ignored %d keys (decoder/heads), e.g. %s",
            path,
            len(unexpected),
            unexpected[:4],
        )
    return unexpected


def _read_state(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("base_model", "model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
