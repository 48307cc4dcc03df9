"""Published numbers of BGAD, WinCLIP and M3DM, to show beside ours when the dataset is one of theirs.

Every value is in [0, 1]. ``category=None`` marks a **mean over the dataset's categories** (unweighted, as the
papers report it); a category name marks a **per-category** cell. ``verified`` is False for cells recalled
from the paper that could not be confirmed against a primary table.

Sources (the papers' tables and the seminar transcript the project started from; what the official code
does is in ``docs/official-code/``):

- BGAD (Yao et al., CVPR 2023, arXiv 2207.01463), MVTec AD, 10 anomalies per category used for training and
  removed from the test set, tf_efficientnet_b6 at 256 px. Per-category pixel AUROC / PRO and the means
  (0.992 / 0.976), image AUROC mean 0.993 (no per-category image AUROC is published). Mean ± std over 3 runs;
  the official code reports the max over epochs on the test set, so these are optimistic.
- WinCLIP (Jeong et al., CVPR 2023, arXiv 2303.14814), OpenCLIP ViT-B/16+ 240 px: zero-shot means and
  per-category image / pixel AUROC on MVTec AD and VisA; WinCLIP+ 1/2/4-shot means (mean over 5 seeds).
- M3DM (Wang et al., CVPR 2023, arXiv 2303.00601), MVTec 3D-AD, RGB + point cloud, evaluated at 224 px.
  Per-category image AUROC (Table 1, RGB+3D row, confirmed by the seminar slides); per-category pixel AUROC
  and AUPRO are recalled (unverified); their means 0.992 / 0.964 are confirmed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DATASET_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mvtec_ad": (
        "bottle",
        "cable",
        "capsule",
        "carpet",
        "grid",
        "hazelnut",
        "leather",
        "metal_nut",
        "pill",
        "screw",
        "tile",
        "toothbrush",
        "transistor",
        "wood",
        "zipper",
    ),  # fmt: skip
    "mvtec_3d": (
        "bagel",
        "cable_gland",
        "carrot",
        "cookie",
        "dowel",
        "foam",
        "peach",
        "potato",
        "rope",
        "tire",
    ),  # fmt: skip
    "visa": (
        "candle",
        "capsules",
        "cashew",
        "chewinggum",
        "fryum",
        "macaroni1",
        "macaroni2",
        "pcb1",
        "pcb2",
        "pcb3",
        "pcb4",
        "pipe_fryum",
    ),  # fmt: skip
}
DATASET_NAMES = {"mvtec_ad": "MVTec AD", "mvtec_3d": "MVTec 3D-AD", "visa": "VisA"}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "aupr", "f1_max")


@dataclass(frozen=True)
class Published:
    """One published number."""

    method: str  # as the paper names it: BGAD, WinCLIP, WinCLIP+, M3DM
    detector: str  # adray detector it corresponds to: bgad, winclip, m3dm
    dataset: str  # mvtec_ad | mvtec_3d | visa
    setting: str  # zero-shot, 1-shot, 10 anomalies, RGB+3D
    metric: str  # one of METRICS
    category: str | None  # None = mean over the dataset's categories
    value: float
    source: str
    verified: bool = True

    @property
    def is_mean(self) -> bool:
        return self.category is None


def recognise_dataset(categories: Iterable[str]) -> str | None:
    """The dataset whose category names contain all of ``categories`` (MVTec AD, MVTec 3D-AD, VisA), or None."""
    cats = {c.lower() for c in categories}
    if not cats:
        return None
    for name, known in DATASET_CATEGORIES.items():
        if cats <= set(known):
            return name
    return None


def published_for(detector: str, dataset: str | None, setting: str | None = None) -> list[Published]:
    """Published numbers for ``detector`` on ``dataset``; ``setting`` (e.g. '1-shot') narrows WinCLIP's rows."""
    rows = [p for p in PUBLISHED if p.detector == detector and p.dataset == dataset]
    if setting is not None:
        rows = [p for p in rows if p.setting == setting]
    return rows


def default_setting(detector: str, shots: int | None = None) -> str | None:
    """Which published setting matches a fitted detector: WinCLIP zero-shot or k-shot, the others' only one."""
    if detector == "winclip":
        return "zero-shot" if not shots else f"{shots}-shot"
    return {"bgad": "10 anomalies", "m3dm": "RGB+3D"}.get(detector)


# ----------------------------------------------------------------------------------------------- tables

_BGAD_SRC = "Yao et al., BGAD, CVPR 2023, Table (MVTec AD, ten anomalies per class)"
_WINCLIP_SRC = "Jeong et al., WinCLIP, CVPR 2023, Tables 1-2 / per-class supplement"
_M3DM_SRC = "Wang et al., M3DM, CVPR 2023, Tables 1-3 (RGB+3D)"

# BGAD per category: (pixel AUROC, PRO)
_BGAD_MVTEC = {
    "carpet": (0.996, 0.989), "grid": (0.995, 0.986), "leather": (0.998, 0.994), "tile": (0.994, 0.978),
    "wood": (0.982, 0.970), "bottle": (0.994, 0.971), "cable": (0.986, 0.977), "capsule": (0.992, 0.964),
    "hazelnut": (0.995, 0.982), "metal_nut": (0.996, 0.970), "pill": (0.996, 0.988), "screw": (0.993, 0.968),
    "toothbrush": (0.995, 0.961), "transistor": (0.983, 0.972), "zipper": (0.993, 0.977),
}  # fmt: skip
# WinCLIP zero-shot per category: (image AUROC, pixel AUROC), percent in the paper
_WINCLIP_MVTEC = {
    "carpet": (100.0, 95.4), "grid": (98.8, 82.2), "leather": (100.0, 96.7), "tile": (100.0, 77.6),
    "wood": (99.4, 93.4), "bottle": (99.2, 89.5), "cable": (86.5, 77.0), "capsule": (72.9, 86.9),
    "hazelnut": (93.9, 94.3), "metal_nut": (97.1, 61.0), "pill": (79.1, 80.0), "screw": (83.3, 89.6),
    "toothbrush": (87.5, 86.9), "transistor": (88.0, 74.7), "zipper": (91.5, 91.6),
}  # fmt: skip
_WINCLIP_VISA = {
    "candle": (95.4, 88.9), "capsules": (85.0, 81.6), "cashew": (92.1, 84.7), "chewinggum": (96.5, 93.3),
    "fryum": (80.3, 88.5), "macaroni1": (76.2, 70.9), "macaroni2": (63.7, 59.3), "pcb1": (73.6, 61.2),
    "pcb2": (51.2, 71.6), "pcb3": (73.4, 85.3), "pcb4": (79.6, 94.4), "pipe_fryum": (69.7, 75.4),
}  # fmt: skip
# WinCLIP / WinCLIP+ means, percent: shots -> (image AUROC, AUPR, F1-max, pixel AUROC, PRO)
_WINCLIP_MEANS = {
    "mvtec_ad": {
        0: (91.8, 96.5, 92.9, 85.1, 64.6), 1: (93.1, 96.5, 93.7, 95.2, 87.1),
        2: (94.4, 97.0, 94.4, 96.0, 88.4), 4: (95.2, 97.3, 94.7, 96.2, 89.0),
    },
    "visa": {
        0: (78.1, 81.2, 79.0, 79.6, 56.8), 1: (83.8, 85.1, 83.1, 96.4, 85.1),
        2: (84.6, 85.8, 83.0, 96.8, 86.2), 4: (87.3, 88.8, 84.2, 97.2, 87.6),
    },
}  # fmt: skip
# M3DM RGB+3D per category: (image AUROC [verified], pixel AUROC [recalled], AUPRO [recalled])
_M3DM_3D = {
    "bagel": (0.994, 0.995, 0.970), "cable_gland": (0.909, 0.993, 0.971), "carrot": (0.972, 0.997, 0.979),
    "cookie": (0.976, 0.985, 0.950), "dowel": (0.960, 0.985, 0.941), "foam": (0.942, 0.984, 0.932),
    "peach": (0.973, 0.996, 0.977), "potato": (0.899, 0.994, 0.971), "rope": (0.972, 0.997, 0.971),
    "tire": (0.850, 0.996, 0.975),
}  # fmt: skip


def _build() -> list[Published]:
    rows: list[Published] = []
    for cat, (pix, pro) in _BGAD_MVTEC.items():
        rows.append(Published("BGAD", "bgad", "mvtec_ad", "10 anomalies", "pixel_auroc", cat, pix, _BGAD_SRC))
        rows.append(Published("BGAD", "bgad", "mvtec_ad", "10 anomalies", "aupro", cat, pro, _BGAD_SRC))
    for metric, value in (("image_auroc", 0.993), ("pixel_auroc", 0.992), ("aupro", 0.976)):
        rows.append(Published("BGAD", "bgad", "mvtec_ad", "10 anomalies", metric, None, value, _BGAD_SRC))
    for dataset, table in (("mvtec_ad", _WINCLIP_MVTEC), ("visa", _WINCLIP_VISA)):
        for cat, (img, pix) in table.items():
            for metric, value in (("image_auroc", img), ("pixel_auroc", pix)):
                rows.append(
                    Published(
                        "WinCLIP",
                        "winclip",
                        dataset,
                        "zero-shot",
                        metric,
                        cat,
                        round(value / 100, 4),
                        _WINCLIP_SRC,
                    )
                )
    for dataset, by_shots in _WINCLIP_MEANS.items():
        for shots, values in by_shots.items():
            method, setting = ("WinCLIP", "zero-shot") if shots == 0 else ("WinCLIP+", f"{shots}-shot")
            for metric, value in zip(("image_auroc", "aupr", "f1_max", "pixel_auroc", "aupro"), values):
                rows.append(
                    Published(
                        method, "winclip", dataset, setting, metric, None, round(value / 100, 4), _WINCLIP_SRC
                    )
                )
    for cat, (img, pix, pro) in _M3DM_3D.items():
        rows.append(Published("M3DM", "m3dm", "mvtec_3d", "RGB+3D", "image_auroc", cat, img, _M3DM_SRC))
        rows.append(
            Published("M3DM", "m3dm", "mvtec_3d", "RGB+3D", "pixel_auroc", cat, pix, _M3DM_SRC, False)
        )
        rows.append(Published("M3DM", "m3dm", "mvtec_3d", "RGB+3D", "aupro", cat, pro, _M3DM_SRC, False))
    for metric, value in (("image_auroc", 0.945), ("pixel_auroc", 0.992), ("aupro", 0.964)):
        rows.append(Published("M3DM", "m3dm", "mvtec_3d", "RGB+3D", metric, None, value, _M3DM_SRC))
    return rows


PUBLISHED: tuple[Published, ...] = tuple(_build())
