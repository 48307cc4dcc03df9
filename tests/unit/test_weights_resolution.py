"""Backbone names and tags resolve as timm and open_clip name them, and pretrained weights load offline from a
Hugging Face cache laid out as ``huggingface-cli download`` leaves it.

The staged cache holds RANDOM weights in the hubs' own formats and file names (timm ``model.safetensors``,
open_clip ``open_clip_pytorch_model.bin``) for every backbone the project names: open_clip
ViT-B-16-plus-240 / laion400m_e31, timm ``tf_efficientnet_b6.aa_in1k`` (BGAD), ``vit_base_patch8_224.dino``
(M3DM), ``resnet18.a1_in1k`` (any ``name.tag``, and bare ``resnet18``). ``HF_HUB_OFFLINE`` is read when
huggingface_hub is imported, so the loading runs once in a subprocess with the environment set; the tests
check what it reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adray.backbones.weights import BackboneNameError

CLIP_HUB = "timm/vit_base_patch16_plus_clip_240.laion400m_e31"
CLIP_FILE = "open_clip_pytorch_model.bin"
TIMM_STAGED = ("resnet18.a1_in1k", "tf_efficientnet_b6.aa_in1k", "vit_base_patch8_224.dino")


# ------------------------------------------------------------------------------- names and tags (no weights)


def test_a_tag_in_the_name_wins_and_names_its_hub_repo():
    from adray.backbones.timm_features import backbone_record, resolve_model_name

    assert resolve_model_name("resnet18.a1_in1k") == "resnet18.a1_in1k"
    assert resolve_model_name("resnet18.a2_in1k") == "resnet18.a2_in1k"
    rec = backbone_record("resnet18.a2_in1k", "pretrained")
    assert rec == {"name": "resnet18.a2_in1k", "weights": "pretrained", "hub_id": "timm/resnet18.a2_in1k"}


def test_a_bare_name_takes_that_models_own_default_tag():
    import timm
    from timm.models import get_pretrained_cfg

    from adray.backbones.timm_features import resolve_model_name

    for arch in ("resnet18", "tf_efficientnet_b6", "vit_base_patch8_224"):
        name = resolve_model_name(arch)
        assert name == f"{arch}.{get_pretrained_cfg(arch).tag}"
        assert name in timm.list_pretrained(f"{arch}.*")
    # the B6 tag BGAD pins is not the bare name's default any more, so it is written in the default name
    assert resolve_model_name("tf_efficientnet_b6") != "tf_efficientnet_b6.aa_in1k"


def test_an_explicit_tag_applies_to_a_bare_name_and_must_not_contradict_the_name():
    from adray.backbones.timm_features import resolve_model_name

    assert resolve_model_name("resnet18", "a2_in1k") == "resnet18.a2_in1k"
    assert resolve_model_name("resnet18.a2_in1k", "a2_in1k") == "resnet18.a2_in1k"
    with pytest.raises(BackboneNameError, match="'a1_in1k'.*'aa_in1k'"):
        resolve_model_name("resnet18.a1_in1k", "aa_in1k")
    with pytest.raises(BackboneNameError, match="no pretrained tag 'aa_in1k' for 'resnet18'.*a1_in1k"):
        resolve_model_name("resnet18", "aa_in1k")


def _fit_bgad_args(*flags: str):
    from adray.cli import build_parser

    base = ["--train", "/nowhere", "--category", "bottle", "--output", "/nowhere/out"]
    return build_parser("adray fit-bgad", "fit-bgad").parse_args([*base, *flags])


def test_fit_bgad_resolves_the_backbone_the_user_wrote():
    from adray.backbones.timm_features import backbone_record
    from adray.commands.fit_bgad import configs_from_args

    def loaded_name(*flags: str) -> str:
        cfg, _ = configs_from_args(_fit_bgad_args(*flags))
        return backbone_record(cfg.backbone, cfg.weights, pretrained_tag=cfg.pretrained_tag)["name"]

    assert loaded_name() == "tf_efficientnet_b6.aa_in1k"  # the paper's B6
    assert loaded_name("--backbone", "resnet18.a1_in1k") == "resnet18.a1_in1k"
    assert loaded_name("--backbone", "resnet18.a2_in1k", "--weights", "pretrained") == "resnet18.a2_in1k"
    assert loaded_name("--backbone", "resnet18", "--pretrained-tag", "a3_in1k") == "resnet18.a3_in1k"
    from timm.models import get_pretrained_cfg

    assert loaded_name("--backbone", "resnet18") == f"resnet18.{get_pretrained_cfg('resnet18').tag}"


@pytest.mark.parametrize(
    "flags",
    [
        ("--backbone", "resnet18.a1_in1k", "--pretrained-tag", "a2_in1k"),
        ("--backbone", "resnet18", "--pretrained-tag", "aa_in1k"),
        ("--backbone", "no_such_net"),
    ],
)
def test_fit_bgad_refuses_names_that_name_no_weights_with_status_2(flags, capsys):
    from adray.commands.fit_bgad import configs_from_args

    with pytest.raises(SystemExit) as info:
        configs_from_args(_fit_bgad_args(*flags))
    assert info.value.code == 2
    assert "adray fit-bgad: error:" in capsys.readouterr().err


def test_build_m3dm_default_is_dino_and_a_wrong_tag_exits_2(capsys):
    from adray.backbones.timm_features import backbone_record
    from adray.cli import build_parser
    from adray.commands.build_m3dm import config_from_args

    parser = build_parser("adray build-m3dm", "build-m3dm")
    base = ["--train", "/nowhere", "--category", "cookie", "--output", "/nowhere/out"]
    cfg = config_from_args(parser.parse_args(base))
    assert backbone_record(cfg.vit.name, cfg.vit.weights)["hub_id"] == "timm/vit_base_patch8_224.dino"
    with pytest.raises(SystemExit) as info:
        config_from_args(parser.parse_args([*base, "--rgb-backbone", "vit_base_patch8_224.no_such_tag"]))
    assert info.value.code == 2 and "no pretrained tag" in capsys.readouterr().err


def test_a_weights_file_loads_under_the_named_tags_config():
    """``vit_base_patch8_224.dino`` with the DINO file normalises inputs as DINO, not as timm's default tag."""
    from timm.models import get_pretrained_cfg

    from adray.backbones.timm_features import backbone_record

    staged = Path(__file__)  # any existing file: the record only names the model and hashes the file
    assert backbone_record("vit_base_patch8_224.dino", str(staged))["name"] == "vit_base_patch8_224.dino"
    assert (
        get_pretrained_cfg("vit_base_patch8_224.dino").mean != get_pretrained_cfg("vit_base_patch8_224").mean
    )


def test_open_clip_models_take_their_own_default_tag():
    import open_clip

    from adray.backbones.open_clip import DEFAULT_MODEL, resolve_pretrained_tag, weights_id_for
    from adray.detectors.winclip.preprocessing import clip_input_spec

    assert resolve_pretrained_tag(DEFAULT_MODEL) == "laion400m_e31"
    rn50_tags = open_clip.list_pretrained_tags_by_model("RN50")
    assert "laion400m_e31" not in rn50_tags
    assert resolve_pretrained_tag("RN50") == rn50_tags[0]
    assert resolve_pretrained_tag("RN50", "yfcc15m") == "yfcc15m"
    assert weights_id_for("RN50") == f"open_clip:RN50:{rn50_tags[0]}"
    size, mean, _ = clip_input_spec("RN50")
    assert mean == tuple(open_clip.get_pretrained_cfg("RN50", rn50_tags[0])["mean"])


def test_hub_file_sha256_reads_the_blob_address_and_hashes_anything_else(tmp_path):
    from adray.backbones.weights import file_sha256, hub_file_sha256

    content = b"weights" * 1000
    digest = hashlib.sha256(content).hexdigest()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / digest).write_bytes(content)
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "model.safetensors").symlink_to(Path("..", "blobs", digest))
    assert hub_file_sha256(str(tmp_path / "snap" / "model.safetensors")) == digest
    copied = tmp_path / "copied.safetensors"  # a cache without symlinks, or any other file: hashed
    copied.write_bytes(b"other")
    assert hub_file_sha256(str(copied)) == file_sha256(str(copied)) == hashlib.sha256(b"other").hexdigest()


# ------------------------------------------------------------------------------- the staged offline cache


def _random_state(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors shaped like ``state`` (cheaply: a tiled random block at random offsets per tensor)."""
    size = 1 << 20
    g = torch.Generator().manual_seed(seed)
    block = torch.randn(size, generator=g) * 0.05
    out = {}
    for key, ref in state.items():
        if not ref.dtype.is_floating_point:
            out[key] = torch.zeros(ref.shape, dtype=ref.dtype)
            continue
        n = ref.numel()
        start = int(torch.randint(0, size - min(n, size) + 1, (1,), generator=g))
        source = block if start + n <= size else block.repeat(n // size + 2)
        value = source[start : start + n].clone().view(ref.shape)
        out[key] = value.abs() + 1.0 if key.endswith("running_var") else value
    return out


def _stage(hub: Path, repo_id: str, filename: str, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Write ``state`` the way ``huggingface-cli download`` leaves a repo: blobs named by content, snapshot
    links to them, ``refs/main`` naming the snapshot commit, and the repo's ``config.json``."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    tmp = repo / "blobs" / "incoming"
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    else:
        torch.save(state, tmp)
    files = {filename: tmp}
    config = repo / "blobs" / "config.incoming"
    config.write_text(json.dumps({"architecture": repo_id.split("/")[1].split(".")[0]}))
    files["config.json"] = config
    digests = {}
    for name, path in files.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.rename(repo / "blobs" / digest)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", digest))
        digests[name] = digest
    return {"path": str(snapshot / filename), "sha256": digests[filename], "revision": commit}


@pytest.fixture(scope="module")
def offline_report(tmp_path_factory) -> dict:
    """Stage the cache, run the loads in a subprocess with ``HF_HUB_OFFLINE=1``, return what it reported."""
    import open_clip
    import timm

    root = tmp_path_factory.mktemp("hf")
    hub = root / "home" / "hub"
    staged: dict[str, dict[str, str]] = {}
    for seed, name in enumerate(TIMM_STAGED):
        with torch.device("meta"):
            shapes = timm.create_model(name, pretrained=False).state_dict()
        staged[name] = _stage(hub, f"timm/{name}", "model.safetensors", _random_state(shapes, seed))
    with torch.device("meta"):
        shapes = open_clip.create_model("ViT-B-16-plus-240", device="meta").state_dict()
    staged["clip"] = _stage(hub, CLIP_HUB, CLIP_FILE, _random_state(shapes, 99))
    del shapes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(root / "home"), HF_HUB_OFFLINE="1", TORCH_HOME=str(root / "torch"))
    out = root / "report.json"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(staged), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"staged": staged, **json.loads(out.read_text())}


_CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import load_file

    from adray.backbones.timm_features import backbone_record, create_timm_backbone, load_backbone
    from adray.backbones.weights import WeightsUnavailableError

    staged, out = json.loads(sys.argv[1]), sys.argv[2]
    report = {}

    def same_as_staged(model, state):
        own = model.state_dict()
        keys = [k for k in own if k in state]
        return len(keys) == len(own) and all(torch.equal(own[k], state[k]) for k in keys)

    def failure(fn):
        try:
            fn()
        except WeightsUnavailableError as e:
            return str(e)
        return None

    # resnet18: tagged name, bare name, and the same file passed as a path give the same model and output
    state = load_file(staged["resnet18.a1_in1k"]["path"])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tagged, tagged_rec = load_backbone(backbone_record("resnet18.a1_in1k", "pretrained"), features_only=False)
    bare, bare_rec = load_backbone(backbone_record("resnet18", "pretrained"), features_only=False)
    from_file = create_timm_backbone("resnet18.a1_in1k", staged["resnet18.a1_in1k"]["path"], features_only=False)
    report["resnet18"] = {
        "record": tagged_rec,
        "bare_record": bare_rec,
        "equal_staged": same_as_staged(tagged, state) and same_as_staged(bare, state),
        "same_output_as_file": torch.equal(tagged(x), from_file(x)) and torch.equal(bare(x), from_file(x)),
        "mismatch": failure(lambda: load_backbone({**tagged_rec, "sha256": "0" * 64}, features_only=False)),
        "missing": failure(lambda: create_timm_backbone("resnet34.a1_in1k", "pretrained")),
    }
    del tagged, bare, from_file, state

    # BGAD with its defaults (the paper's B6): what fit-bgad builds and records
    from adray.cli import build_parser
    from adray.commands.fit_bgad import configs_from_args
    from adray.detectors.bgad.model import BgadModel

    args = build_parser("adray fit-bgad", "fit-bgad").parse_args(
        ["--train", "/x", "--category", "c", "--output", "/x/o"]
    )
    model = BgadModel(configs_from_args(args)[0])
    state = load_file(staged["tf_efficientnet_b6.aa_in1k"]["path"])
    own = model.backbone.state_dict()
    report["b6"] = {
        "record": model.backbone_info,
        "equal_staged": len(own) > 100 and all(k in state and torch.equal(v, state[k]) for k, v in own.items()),
    }
    del model, state, own

    # M3DM's DINO ViT-B/8
    from adray.backbones.vit_features import ViTConfig, ViTPatchGrid

    grid = ViTPatchGrid(ViTConfig())
    state = load_file(staged["vit_base_patch8_224.dino"]["path"])
    report["dino"] = {
        "record": grid.record,
        "equal_staged": same_as_staged(grid.model, state),
        "mean": list(grid.mean),
    }
    del grid, state

    # WinCLIP's open_clip ViT-B-16-plus-240, tag laion400m_e31, from the hub's .bin
    from adray.backbones.open_clip import load_clip

    state = torch.load(staged["clip"]["path"], map_location="cpu", weights_only=True)
    pretrained = load_clip("ViT-B-16-plus-240", "pretrained", device="cpu")
    from_file = load_clip("ViT-B-16-plus-240", staged["clip"]["path"], device="cpu")
    report["clip"] = {
        "record": pretrained.weights_record(),
        "file_record": from_file.weights_record(),
        "equal_staged": same_as_staged(pretrained.model, state),
        "same_as_file": all(
            torch.equal(a, b)
            for a, b in zip(pretrained.model.state_dict().values(), from_file.model.state_dict().values())
        ),
        "missing": failure(lambda: load_clip("ViT-B-16", "pretrained", "laion400m_e31", device="cpu")),
    }
    del from_file, state

    # a WinCLIP artifact records the hub file and refuses a cache whose file differs
    import os
    from adray.detectors.winclip import load_winclip
    from adray.detectors.winclip.model import WinClip, WinClipConfig

    uri = os.path.join(os.path.dirname(out), "winclip-bottle")
    # given text embeddings skip the prompt ensemble (seconds of text tower); they are not what is checked
    text = torch.randn(2, 640, generator=torch.Generator().manual_seed(0))
    detector = WinClip(pretrained, WinClipConfig(class_name="bottle"), text=text)
    detector.save(uri)
    with open(os.path.join(uri, "config.json")) as f:
        doc = json.load(f)
    report["winclip"] = {
        "weights_source": dict(doc["config"]["weights_source"]),
        "reloaded_same_version": load_winclip(uri, device="cpu").version == detector.version,
    }
    doc["config"]["weights_source"]["sha256"] = "0" * 64
    with open(os.path.join(uri, "config.json"), "w") as f:
        json.dump(doc, f)
    try:
        load_winclip(uri, device="cpu")
        report["winclip"]["changed_file"] = None
    except ValueError as e:
        report["winclip"]["changed_file"] = str(e)
    with open(out, "w") as f:
        json.dump(report, f)
    """
)


def test_offline_timm_name_tag_loads_the_staged_file(offline_report):
    r, staged = offline_report["resnet18"], offline_report["staged"]["resnet18.a1_in1k"]
    assert r["equal_staged"] and r["same_output_as_file"]
    assert r["record"] == {
        "name": "resnet18.a1_in1k",
        "weights": "pretrained",
        "hub_id": "timm/resnet18.a1_in1k",
        "file": "model.safetensors",
        "revision": staged["revision"],
        "sha256": staged["sha256"],
    }
    # bare resnet18 is timm's default tag, the one staged
    assert r["bare_record"] == r["record"]


def test_offline_a_changed_hub_file_or_missing_cache_says_what_to_do(offline_report):
    r = offline_report["resnet18"]
    assert r["mismatch"] is not None and "sha256" in r["mismatch"]
    assert r["missing"] is not None
    assert "huggingface-cli download timm/resnet34.a1_in1k" in r["missing"] and "--weights" in r["missing"]
    clip_missing = offline_report["clip"]["missing"]
    assert clip_missing is not None and "timm/vit_base_patch16_clip_224.laion400m_e31" in clip_missing


def test_offline_bgad_default_backbone_is_b6_aa_and_records_the_hub_file(offline_report):
    r, staged = offline_report["b6"], offline_report["staged"]["tf_efficientnet_b6.aa_in1k"]
    assert r["equal_staged"]
    assert r["record"]["name"] == "tf_efficientnet_b6.aa_in1k"
    assert r["record"]["hub_id"] == "timm/tf_efficientnet_b6.aa_in1k"
    assert (r["record"]["sha256"], r["record"]["revision"]) == (staged["sha256"], staged["revision"])


def test_offline_m3dm_dino_loads_with_dino_normalisation(offline_report):
    from timm.models import get_pretrained_cfg

    r, staged = offline_report["dino"], offline_report["staged"]["vit_base_patch8_224.dino"]
    assert r["equal_staged"]
    assert r["record"]["hub_id"] == "timm/vit_base_patch8_224.dino"
    assert r["record"]["sha256"] == staged["sha256"]
    assert tuple(r["mean"]) == tuple(get_pretrained_cfg("vit_base_patch8_224.dino").mean)


def test_offline_open_clip_reads_the_hubs_bin_and_equals_the_file(offline_report):
    r, staged = offline_report["clip"], offline_report["staged"]["clip"]
    assert r["equal_staged"] and r["same_as_file"]
    rec = r["record"]
    assert (rec["hub_id"], rec["file"], rec["pretrained_tag"]) == (CLIP_HUB, CLIP_FILE, "laion400m_e31")
    assert (rec["sha256"], rec["revision"]) == (staged["sha256"], staged["revision"])
    assert r["file_record"]["sha256"] == staged["sha256"]


def test_offline_winclip_artifact_records_the_hub_file_and_checks_it_on_reload(offline_report):
    r, staged = offline_report["winclip"], offline_report["staged"]["clip"]
    source = r["weights_source"]
    assert (source["hub_id"], source["file"], source["sha256"]) == (CLIP_HUB, CLIP_FILE, staged["sha256"])
    assert source["pretrained_tag"] == "laion400m_e31" and source["revision"] == staged["revision"]
    assert r["reloaded_same_version"]
    assert r["changed_file"] is not None and "sha256" in r["changed_file"]
