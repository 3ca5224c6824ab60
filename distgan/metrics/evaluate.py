"""One evaluation of a generator against a dataset split: FID, KID, IS, precision/recall, fool rate, PPL.

The generated images are made once, batch by batch, and every requested
metric takes what it needs from the same batches (features, IS logits, D's
scores). The real side comes from the cache (`reference.py`): statistics for
FID, features for KID and precision/recall, over the whole split unless
`n_real` caps it. Perceptual path length (`ppl.py`) draws its own pairs in the
generator's W and needs no real images. The result is a plain dict, written as
JSON by the CLI and the quality benchmark.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from tqdm import tqdm

from distgan.data.loader import read_manifest
from distgan.metrics.domain import domain_features, find_domain_model
from distgan.metrics.features import FeatureExtractor
from distgan.metrics.fool import FoolRate, load_run_discriminator
from distgan.metrics.generated import OnnxSource, TorchSource
from distgan.metrics.inception import InceptionFeatures
from distgan.metrics.lpips_vgg import LPIPSDistance
from distgan.metrics.ppl import PPL_SETTINGS, path_lengths, ppl_of, w_space_of
from distgan.metrics.reference import reference_features, reference_stats
from distgan.metrics.scores import FeatureStats, fid, inception_score, kid, precision_recall
from distgan.models import latent_size

log = logging.getLogger("distgan")

METRICS = ("fid", "kid", "is", "pr", "fool", "ppl")
FEATURE_METRICS = {"fid", "kid", "pr"}  # what needs the feature extractor (and "is" its logits)
PPL_BATCH = 16  # path pairs per batch at most: 32 images of 256 px through VGG16, ~1 GB of activations
FEATURES = ("inception", "domain")


def parse_metrics(text: str | Iterable[str]) -> list[str]:
    """'fid,kid' -> ['fid', 'kid'], refusing unknown names."""
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def make_extractors(features: str, dataset: str, *, device: str | torch.device = "cpu",
                    domain_model: str | Path | None = None, inception: str | Path | None = None,
                    is_weights: str | Path | None = None, download: bool = False,
                    need_logits: bool = False) -> tuple[FeatureExtractor, FeatureExtractor | None]:
    """(features for FID/KID/PR, logits for IS or None): the standard Inception pair or the domain classifier."""
    if features == "domain":
        directory = find_domain_model(dataset, domain_model)
        extractor = domain_features(directory, "features", device)
        spec = extractor.model.spec
        if spec.dataset != dataset:
            log.warning("domain classifier %s was trained on %r, evaluating %r", directory, spec.dataset, dataset)
        return extractor, domain_features(directory, "logits", device) if need_logits else None
    if features == "inception":
        extractor = InceptionFeatures(inception, device=device, download=download)
        if not need_logits:
            return extractor, None
        from distgan.metrics.inception_logits import InceptionLogits

        return extractor, InceptionLogits(is_weights, device=device, download=download)
    raise ValueError(f"features must be one of {FEATURES}, not {features!r}")


def hardware() -> dict[str, Any]:
    """Where a figure was measured: accelerator, CPU count, library versions."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    else:
        info["gpu"] = None
    for package in ("torch_fidelity", "onnxruntime"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            pass
    return info


def evaluate(
    source: TorchSource | OnnxSource, data: str | Path | None, *, split: str = "test", n: int = 10_000,
    metrics: Iterable[str] = ("fid",), features: str = "inception", device: str | torch.device = "cpu",
    domain_model: str | Path | None = None, inception: str | Path | None = None,
    is_weights: str | Path | None = None, download: bool = False, run: str | Path | None = None,
    n_real: int | None = None, batch_size: int = 250, seed: int = 0, cache_dir: str | Path | None = None,
    progress: bool = True, lpips_vgg: str | Path | None = None, ppl_n: int | None = None,
) -> dict[str, Any]:
    """Score `n` images of `source` against `split` of `data`; `run` (with a checkpoint) enables "fool";
    "ppl" measures `ppl_n` (default `n`) path lengths (`data` may then be None when nothing else is asked)."""
    metrics = parse_metrics(metrics)
    start = time.perf_counter()
    space = None
    if "ppl" in metrics:  # refused before anything is loaded
        if not isinstance(source, TorchSource):
            raise ValueError("ppl needs the torch generator (--run): an ONNX export takes z, and ppl walks in W")
        space = w_space_of(source.generator)
        ppl_n = n if ppl_n is None else ppl_n
        if ppl_n < 1:
            raise ValueError(f"--ppl-n {ppl_n}: need at least 1 path")
    image_metrics = [m for m in metrics if m != "ppl"]
    manifest = None
    if data is not None:
        manifest = read_manifest(str(data))
        c, h, w = source.info.image_shape
        if (h, w, c) != manifest.image_shape:
            raise ValueError(f"generator makes {c}x{h}x{w} images, {data} holds "
                             f"{manifest.channels}x{manifest.height}x{manifest.width}")
        if source.info.dataset and source.info.dataset != manifest.name:
            log.warning("generator was trained on %r, evaluated against %r", source.info.dataset, manifest.name)
    elif image_metrics:
        raise ValueError(f"{', '.join(image_metrics)}: scored against real images, which --data names")
    extractor, logits = None, None
    if FEATURE_METRICS & set(metrics) or "is" in metrics:
        extractor, logits = make_extractors(features, manifest.name, device=device, domain_model=domain_model,
                                            inception=inception, is_weights=is_weights, download=download,
                                            need_logits="is" in metrics)
    distance = LPIPSDistance(lpips_vgg, device=device, download=download) if space is not None else None
    fool = None
    if "fool" in metrics:
        if run is None:
            raise ValueError("the fool rate needs the run directory (its trained discriminator): use --run")
        D, kind, checkpoint = load_run_discriminator(run, device)
        fool = FoolRate(D, kind, device)
    timings: dict[str, float] = {"setup_s": time.perf_counter() - start}

    t = time.perf_counter()
    fake_features, fake_logits = [], []
    bar = _bar(n, f"generated ({features})", progress and bool(image_metrics))
    for batch in source.batches(n, batch_size, seed) if image_metrics else ():
        if FEATURE_METRICS & set(metrics):
            fake_features.append(extractor(batch.images))
        if logits is not None:
            fake_logits.append(logits(batch.images))
        if fool is not None:
            fool.add_fake(batch.images, batch.labels)
        bar.update(len(batch.images))
    bar.close()
    timings["generated_s"] = time.perf_counter() - t

    ppl = None
    if space is not None:
        t = time.perf_counter()
        bar = _bar(ppl_n, "ppl", progress, unit="path")
        ppl_batch = min(batch_size, PPL_BATCH)  # G's noise is redrawn per batch: the figure depends on it
        lengths = path_lengths(space, distance, ppl_n, latent_size(source.generator), source.info.num_classes,
                               batch_size=ppl_batch, seed=seed, device=source.device, progress=bar.update)
        bar.close()
        ppl = {**PPL_SETTINGS, "n": ppl_n, "batch": ppl_batch, "distance": distance.name,
               "vgg16": str(distance.path)}
        timings["ppl_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cache = dict(max_images=n_real, cache_dir=cache_dir, progress=progress)
    real_features = reference_features(extractor, data, split, **cache) if {"kid", "pr"} & set(metrics) else None
    stats = reference_stats(extractor, data, split, **cache) if "fid" in metrics else None
    if fool is not None:
        fool.add_real_split(data, split, n, batch_size)
    timings["real_s"] = time.perf_counter() - t

    t = time.perf_counter()
    values: dict[str, float] = {}
    generated = torch.cat(fake_features) if fake_features else None
    if stats is not None:
        values["fid"] = fid(FeatureStats.of(generated), stats)
    if real_features is not None and "kid" in metrics:
        values["kid"], values["kid_std"] = kid(generated, real_features)
    if real_features is not None and "pr" in metrics:
        values["precision"], values["recall"] = precision_recall(generated, real_features)
    if logits is not None:
        values["is"], values["is_std"] = inception_score(torch.cat(fake_logits))
    if fool is not None:
        values.update(fool.result())
    if ppl is not None:
        values["ppl"] = ppl_of(lengths)
    timings["metrics_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start
    info = source.info
    return {
        "metrics": values, "features": extractor.name if extractor is not None else None,
        "features_kind": features if extractor is not None else None,
        "is_features": logits.name if logits is not None else None, "ppl": ppl,
        "n": n if image_metrics else None,
        "n_real": stats.count if stats is not None else (len(real_features) if real_features is not None
                                                         else None),
        "split": split if image_metrics else None, "dataset": manifest.name if manifest is not None else None,
        "data": str(data) if data is not None else None,
        "source": {"kind": info.kind, "path": info.path, "dataset": info.dataset, **info.extra},
        "step": info.step, "config_hash": info.config_hash, "seed": seed,
        "discriminator_checkpoint": str(checkpoint) if fool is not None else None,
        "timings": {k: round(v, 2) for k, v in timings.items()}, "hardware": hardware(),
    }


def _bar(total: int, desc: str, enabled: bool, unit: str = "img") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)


def format_table(result: dict[str, Any]) -> str:
    """The figures as a fixed-width table, one metric a line."""
    rows = [("metric", "value", "features", "n", "time")]
    elapsed = f"{result['timings']['total_s']:.1f} s"
    for key, value in result["metrics"].items():
        if key == "ppl":
            kind, n = result["ppl"]["distance"], result["ppl"]["n"]
        else:
            kind = "D" if key.startswith("fool/") else (result["is_features"] if key.startswith("is") else
                                                         result["features"])
            n = result["n"]
        rows.append((key, f"{value:.6g}" if isinstance(value, float) else str(value), kind.split(":")[0],
                     str(n), elapsed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
