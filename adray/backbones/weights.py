"""Where backbone weights come from, resolved in one place.

A weights *spec* is one of:

- ``"pretrained"``: the model's pinned hub tag (timm ``name.tag`` / open_clip ``pretrained=`` tag), read
  from the local Hugging Face / torch cache; set ``HF_HUB_OFFLINE=1`` (before importing timm/open_clip,
  e.g. in Ray's ``runtime_env.env_vars``) on air-gapped clusters with a pre-staged ``HF_HOME``;
- a local or object-storage path to a weights file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``);
- ``"random"``: random initialisation, chosen explicitly (tests, demos). Never a silent fallback.

Offline with nothing cached, loading raises :class:`WeightsUnavailableError`, whose message names the
ways to provide the weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Literal

from adray import storage

WeightsKind = Literal["pretrained", "file", "random"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (typically: offline and not cached)."""


@dataclass(frozen=True)
class WeightsSpec:
    kind: WeightsKind
    path: str | None = None  # for kind == "file": a local path (object-storage files are fetched first)

    @property
    def tag(self) -> str:
        """A short description recorded in artifacts and result rows."""
        return self.kind if self.kind != "file" else f"file:{os.path.basename(self.path or '')}"


def parse_weights(spec: str | None) -> WeightsSpec:
    """Parse ``pretrained | random | PATH``; object-storage files are downloaded to a local cache."""
    if spec is None or spec == "" or spec == "pretrained":
        return WeightsSpec("pretrained")
    if spec == "random":
        return WeightsSpec("random")
    loc = storage.resolve(spec)
    if loc.protocol == "file":
        if not os.path.isfile(loc.path):
            raise WeightsUnavailableError(
                f"weights file {spec!r} does not exist; pass --weights pretrained, --weights random (tests only) "
                "or the path of a .safetensors/.pt file"
            )
        return WeightsSpec("file", loc.path)
    return WeightsSpec("file", fetch_to_cache(spec))


def fetch_to_cache(url: str) -> str:
    """Copy a remote weights file into ``$ADRAY_CACHE`` (default ``~/.cache/adray``), once per content."""
    cache = os.environ.get("ADRAY_CACHE", os.path.expanduser("~/.cache/adray"))
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    local = os.path.join(cache, "weights", key, os.path.basename(url.rstrip("/")))
    if not os.path.isfile(local):
        storage.write_bytes(local, storage.read_bytes(url))
    return local


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def offline_help(model: str, tag: str, hub_id: str | None = None) -> str:
    """The message for an offline failure: what was asked and how to provide it."""
    hub = hub_id or f"timm/{model}.{tag}"
    return (
        f"could not load pretrained weights for {model!r} (tag {tag!r}): no network and not in the local cache. "
        f"Provide them one of these ways: (1) on a connected host run `huggingface-cli download {hub}`, copy "
        "the Hugging Face cache to this machine, set HF_HOME to it and HF_HUB_OFFLINE=1; (2) pass a local "
        "weights file with --weights /path/to/weights.safetensors (or .pt/.pth); (3) for tests and demos only, "
        "pass --weights random"
    )
