"""FID, KID, IS and precision/recall on feature sets, computed by torch-fidelity.

torch-fidelity's feature-level functions are used (not its image pipeline), so
the same numbers come out whichever extractor made the features (Inception or
the domain classifier) and however the images were streamed. Convention of the
pairwise scores: first argument generated, second real.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

Features = torch.Tensor | np.ndarray


class MeanStd(NamedTuple):
    mean: float
    std: float


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian summary of a feature set, all FID needs; float64 so FID keeps its small digits."""

    mu: np.ndarray  # [D]
    sigma: np.ndarray  # [D, D]
    count: int

    @classmethod
    def of(cls, features: Features) -> "FeatureStats":
        x = _matrix(features, torch.float64).numpy()
        if len(x) < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(x)}")
        return cls(x.mean(axis=0), np.cov(x, rowvar=False), len(x))


def _matrix(features: Features, dtype: torch.dtype) -> torch.Tensor:
    x = torch.as_tensor(features).detach().cpu().to(dtype)
    if x.ndim != 2:
        raise ValueError(f"expected features [N, D], got shape {tuple(x.shape)}")
    return x


def fid(generated: FeatureStats | Features, real: FeatureStats | Features) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets."""
    a = generated if isinstance(generated, FeatureStats) else FeatureStats.of(generated)
    b = real if isinstance(real, FeatureStats) else FeatureStats.of(real)
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    stats = [{"mu": s.mu.astype(np.float64), "sigma": s.sigma.astype(np.float64)} for s in (a, b)]
    return fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]


def kid(generated: Features, real: Features, *, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> MeanStd:
    """Kernel Inception Distance: unbiased MMD², cubic polynomial kernel, averaged over random subsets.

    `subset_size` shrinks to the smaller set when a set is smaller (torch-fidelity
    would refuse), so small evaluations still run; compare KIDs at equal sizes.
    """
    x, y = _matrix(generated, torch.float64), _matrix(real, torch.float64)
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    out = kid_features_to_metric(x, y, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False)
    return MeanStd(out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD])


def inception_score(logits: Features, *, splits: int = 10, seed: int = 2020) -> MeanStd:
    """exp(E KL(p(y|x) || p(y))) over `splits` shuffled chunks, from classifier logits."""
    out = isc_features_to_metric(_matrix(logits, torch.float64), splits=splits, shuffle=True, rng_seed=seed)
    return MeanStd(out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD])


def precision_recall(generated: Features, real: Features, *, k: int = 3) -> PrecisionRecall:
    """Kynkäänniemi et al. (2019): share of each set inside the other's k-NN balls."""
    x, y = _matrix(generated, torch.float32), _matrix(real, torch.float32)
    if min(len(x), len(y)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set")
    out = prc_features_to_metric(x, y, prc_neighborhood=k, save_cpu_ram=len(x) * len(y) > 1 << 26,
                                 verbose=False)
    return PrecisionRecall(out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL])
