"""Where backbone weights come from, resolved in one place.

A weights *spec* is one of:

- ``"pretrained"``: the model's hub weights for its tag (timm ``name.tag`` / open_clip ``pretrained=`` tag),
  read from the local Hugging Face / torch cache; set ``HF_HUB_OFFLINE=1`` (before importing timm/open_clip,
  e.g. in Ray's ``runtime_env.env_vars``) on air-gapped clusters with a pre-staged ``HF_HOME``. Which tag:
  one written in the name wins, else an explicit ``pretrained_tag``, else the model's own default (timm's
  first-listed tag; for open_clip see :mod:`adray.backbones.open_clip`); a name tag and a different explicit
  tag raise :class:`BackboneNameError`;
- a local or object-storage path to a weights file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``);
- ``"random"``: random initialisation, chosen explicitly (tests, demos). Never a silent fallback.

Offline with nothing cached, loading raises :class:`WeightsUnavailableError`, whose message names the
ways to provide the weights. :func:`hub_weights_file` finds a hub file the way the libraries do (the hub's
own file names, safetensors first) and :func:`hub_file_record` says what was read (hub id, file, snapshot
revision, sha256), which artifacts record.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from adray import storage

WeightsKind = Literal["pretrained", "file", "random"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (typically: offline and not cached)."""


class BackboneNameError(ValueError):
    """A backbone name and weight tag that do not name one set of weights (unknown tag, conflicting tags)."""


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


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    return file_sha256(path)


def cached_file_sha256(path: str) -> str:
    """:func:`file_sha256`, computed once per process per (file, size, mtime)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return _sha256_cached(real, st.st_size, st.st_mtime)


def hub_weights_file(hub_id: str, filenames: Sequence[str], *, model: str, tag: str) -> str:
    """The local path of the first of ``filenames`` that the Hugging Face hub cache has (or can download).

    ``hub_id`` may carry ``@revision``. With ``HF_HUB_OFFLINE=1`` only the cache under ``HF_HOME`` is read.
    Raises :class:`WeightsUnavailableError` (see :func:`offline_help`) when no candidate can be had.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, _, revision = hub_id.partition("@")
    last: Exception | None = None
    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, revision=revision or None)
        except EntryNotFoundError as e:  # not in the repo or not cached: try the next name, as timm does
            last = e
        except Exception as e:  # network, missing repo, gated: the weights are not reachable
            raise WeightsUnavailableError(offline_help(model, tag, repo_id)) from e
    raise WeightsUnavailableError(offline_help(model, tag, repo_id)) from last


def hub_file_record(hub_id: str | None, path: str | None, *, with_sha256: bool = True) -> dict[str, Any]:
    """What an artifact records about a hub weights file: hub id, file name, snapshot revision, sha256."""
    record: dict[str, Any] = {"hub_id": hub_id}
    if path:
        folder = os.path.dirname(path)
        record["file"] = os.path.basename(path)
        # the cache layout is .../models--org--name/snapshots/<commit>/<file>
        if os.path.basename(os.path.dirname(folder)) == "snapshots":
            record["revision"] = os.path.basename(folder)
        if with_sha256:
            record["sha256"] = hub_file_sha256(path)
    return record


def hub_file_sha256(path: str) -> str:
    """The sha256 of a weights file; for a Hugging Face cache entry that links to an LFS blob, the blob's
    name, which the hub cache sets to that sha256 (saves hashing ~1 GB in every process that checks it)."""
    if os.path.islink(path):
        folder, blob = os.path.split(os.path.realpath(path))
        if os.path.basename(folder) == "blobs" and re.fullmatch(r"[0-9a-f]{64}", blob):
            return blob
    return cached_file_sha256(path)
