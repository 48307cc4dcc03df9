"""Decision Layer Fusion (DLF, M3DM §3.5): one-class SVMs over the per-bank image and pixel scores.

D_a fuses the image scores ``[s_xyz, s_rgb, (s_fused)]`` and D_s the per-pixel map values. Each is a
scikit-learn ``OneClassSVM`` (nu 0.5) fitted at build time; the artifact stores only tensors (support
vectors, dual coefficients, intercept, gamma, kernel name, input scales) and :class:`OneClassSVMParams`
evaluates the decision function in torch, equal to sklearn's ``decision_function``.

Departures from the official code, on purpose:

- fitted on normal items *held out from the banks* (MVTec 3D-AD ``validation/good``, or a hash-selected
  slice of train); the official code scores the bank's own training images, whose patches are in the bank;
- each input column is divided by a high quantile (default 0.9) of its absolute values on those held-out
  items (the official code multiplies by fixed lambdas 1 / 0.1 / 1 tuned to its crossed normalisation).
  Artifacts built before used the median (quantile 0.5): on real scans most pixels are far background
  whose xyz score is 0 or faiss noise (~1e-2), so the median collapsed, the xyz column's weight grew by
  orders of magnitude and the pixel fusion was the xyz map alone;
- the pixel SVM is fitted on foreground pixels only (where the preprocessed cloud has points; the
  official code fits every pixel, background included), on a seeded subsample (``max_pixel_rows``), not
  on all 50,176 per image;
- ``OneClassSVM(kernel="linear")`` (exact libsvm) instead of ``SGDOneClassSVM``; the anomaly score is
  ``w.x`` (decision function + rho), larger = more anomalous, as the official ``score_samples``. With
  ``kernel="rbf"`` the anomaly score is ``-decision_function``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class OneClassSVMParams:
    """A fitted one-class SVM as tensors: ``f(x) = sum_i a_i K(sv_i, x / scale) + intercept``."""

    support_vectors: torch.Tensor  # [S, F] (on scaled inputs)
    dual_coef: torch.Tensor  # [S]
    intercept: float
    gamma: float
    kernel: str
    scale: torch.Tensor  # [F] per-column divisor applied before the kernel

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        """sklearn's ``decision_function`` for raw (unscaled) inputs ``[N, F]``; float64 ``[N]``."""
        z = x.double() / self.scale.double()
        sv = self.support_vectors.double()
        if self.kernel == "linear":
            k = z @ sv.T
        elif self.kernel == "rbf":
            k = torch.exp(-self.gamma * torch.cdist(z, sv) ** 2)
        else:
            raise ValueError(f"unsupported one-class SVM kernel {self.kernel!r}")
        return k @ self.dual_coef.double() + self.intercept

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """Larger = more anomalous: ``w.x`` for the linear kernel, ``-f(x)`` for rbf."""
        f = self.decision_function(x)
        return (f - self.intercept if self.kernel == "linear" else -f).float()

    def input_weights(self) -> torch.Tensor | None:
        """Linear kernel: the weight ``[F]`` of each raw input column in ``w.x`` (``w / scale``); else None."""
        if self.kernel != "linear":
            return None
        w = self.dual_coef.double() @ self.support_vectors.double()
        return w / self.scale.double()

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.support_vectors": self.support_vectors.double().contiguous(),
            f"{prefix}.dual_coef": self.dual_coef.double().contiguous(),
            f"{prefix}.scale": self.scale.double().contiguous(),
            f"{prefix}.scalars": torch.tensor([self.intercept, self.gamma], dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, prefix: str, tensors: dict[str, torch.Tensor], kernel: str) -> OneClassSVMParams:
        intercept, gamma = (float(v) for v in tensors[f"{prefix}.scalars"])
        return cls(
            tensors[f"{prefix}.support_vectors"],
            tensors[f"{prefix}.dual_coef"],
            intercept,
            gamma,
            kernel,
            tensors[f"{prefix}.scale"],
        )


def column_scales(rows: np.ndarray, quantile: float = 0.9) -> np.ndarray:
    """Per-column divisors ``[F]`` of ``rows [N, F]``: the ``quantile`` of ``|x|`` (1.0 where that is ~0).

    A high quantile stays at the scale of the informative values while up to ``1 - quantile`` of a
    column is zeros; the median (0.5) collapses once half of it is.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"the DLF scale quantile must be in (0, 1], got {quantile}")
    scale = np.quantile(np.abs(np.asarray(rows, dtype=np.float64)), quantile, axis=0)
    return np.where(scale > 1e-12, scale, 1.0)


def fit_one_class_svm(
    rows: np.ndarray,
    kernel: str = "linear",
    nu: float = 0.5,
    max_rows: int | None = None,
    seed: int = 0,
    scale_quantile: float = 0.9,
) -> tuple[OneClassSVMParams, object]:
    """Fit on ``rows [N, F]`` (normal data), each column divided by :func:`column_scales`; returns the
    tensor form and the sklearn model (for checks). Raises ``ValueError`` for a bad quantile."""
    from sklearn.svm import OneClassSVM

    x = np.asarray(rows, dtype=np.float64)
    if max_rows is not None and len(x) > max_rows:
        x = x[np.random.default_rng(seed).choice(len(x), max_rows, replace=False)]
    scale = column_scales(x, scale_quantile)
    z = x / scale
    model = OneClassSVM(kernel=kernel, nu=nu, gamma="scale").fit(z)
    params = OneClassSVMParams(
        torch.from_numpy(np.asarray(model.support_vectors_, dtype=np.float64)),
        torch.from_numpy(np.asarray(model.dual_coef_, dtype=np.float64)[0]),
        float(model.intercept_[0]),
        float(model._gamma),
        kernel,
        torch.from_numpy(scale),
    )
    return params, model
