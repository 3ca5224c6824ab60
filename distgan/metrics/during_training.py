"""Evaluation during training: every `eval.every` steps, FID of the EMA generator, and the best one kept.

Every rank generates its share of `eval.n` images (fixed latents, so
successive evaluations differ only by the weights) and extracts features on
its own device; `accelerator.gather` brings the features to every rank and
rank 0 alone scores them against the cached reference statistics, logs
`eval/fid` (and `eval/kid`) through the run monitor (metrics.jsonl + W&B) and
writes `generator_best/` when the FID improves. All ranks take the same
branches (the cadence is a function of the step), so nothing can deadlock.
Everything that can fail (no domain classifier, no Inception weights, no such
split) fails when the evaluator is built, before the first training step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from distgan import ddp
from distgan.artifacts import GENERATOR_SPEC, save_generator
from distgan.config import Config, ConfigError
from distgan.data import DataError, Manifest
from distgan.metrics.evaluate import make_extractors
from distgan.runtime import to_uint8_nhwc
from distgan.metrics.generated import latents
from distgan.models import generate
from distgan.metrics.inception import InceptionWeightsError
from distgan.metrics.reference import reference_features, reference_stats
from distgan.metrics.scores import FeatureStats, fid, kid
from distgan.monitor import RunMonitor

log = logging.getLogger("distgan")

BEST_DIR = "generator_best"


class TrainingEvaluator:
    """Built once before the loop; `due(step)` says when, `run(...)` evaluates on every rank."""

    def __init__(self, cfg: Config, accelerator: Accelerator, manifest: Manifest, run_path: Path,
                 num_classes: int, control: ddp.Control):
        self.cfg, self.accelerator, self.run_path = cfg.eval, accelerator, run_path
        self.every = cfg.eval.every
        if not self.every:
            return
        rank, world = accelerator.process_index, accelerator.num_processes
        try:
            manifest.split(cfg.eval.split)
            self.extractor, _ = make_extractors(cfg.eval.features, manifest.name, device=accelerator.device,
                                                domain_model=cfg.eval.domain_model)
        except (DataError, FileNotFoundError, InceptionWeightsError) as exc:
            raise ConfigError(f"eval.every={self.every} with eval.features={cfg.eval.features}, "
                              f"eval.split={cfg.eval.split}: {exc}") from exc
        self.per_rank = math.ceil(cfg.eval.n / world)
        self.z, self.labels = latents(self.per_rank, cfg.model.nz, num_classes, seed=cfg.seed * 7919 + rank + 1)
        self.stats = self.real = None
        error = None
        if accelerator.is_main_process:  # the reference is cached, so later runs read it in a moment
            try:
                data = cfg.data.path
                if "kid" in self.cfg.metrics:
                    self.real = reference_features(self.extractor, data, self.cfg.split)
                self.stats = reference_stats(self.extractor, data, self.cfg.split)
            except (DataError, OSError, ValueError) as exc:
                error = exc
        if control.any(error is not None):
            raise ConfigError(f"eval: reference statistics of split {cfg.eval.split!r} of {cfg.data.path}: "
                              f"{error or 'failed on rank 0'}")
        self.best = self._previous_best()

    def _previous_best(self) -> float:
        """A resumed run keeps the best it had, if it was scored the same way."""
        spec = self.run_path / BEST_DIR / GENERATOR_SPEC
        if not spec.is_file():
            return math.inf
        record = json.loads(spec.read_text()).get("eval", {})
        same = record.get("features") == self.extractor.name and record.get("n") == self.per_rank * \
            self.accelerator.num_processes
        return float(record["fid"]) if same and "fid" in record else math.inf

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    @torch.no_grad()
    def run(self, step: int, generator: torch.nn.Module, monitor: RunMonitor,
            generator_info: dict[str, Any]) -> dict[str, float] | None:
        """Evaluate `generator` (the EMA module) at `step`; rank 0 returns the figures, the others None."""
        start = time.perf_counter()
        device = self.accelerator.device
        was_training = generator.training
        generator.eval()
        parts = []
        for at in range(0, self.per_rank, self.cfg.batch_size):
            z = self.z[at:at + self.cfg.batch_size].to(device)
            labels = self.labels[at:at + self.cfg.batch_size].to(device) if self.labels is not None else None
            parts.append(self.extractor(to_uint8_nhwc(generate(generator, z, labels).float())))
        generator.train(was_training)
        features = self.accelerator.gather(torch.cat(parts).to(device)).cpu()
        if not self.accelerator.is_main_process:
            return None
        values = {"eval/fid": fid(FeatureStats.of(features), self.stats)}
        if self.real is not None:
            values["eval/kid"] = kid(features, self.real).mean
        values["eval/seconds"] = time.perf_counter() - start
        monitor.log(step, values)
        if self.cfg.keep_best and values["eval/fid"] < self.best:
            self.best = values["eval/fid"]
            record = {"fid": self.best, "features": self.extractor.name, "n": len(features), "split": self.cfg.split}
            save_generator(generator, self.run_path / BEST_DIR, {**generator_info, "step": step, "eval": record})
            log.info("step %d: eval FID %.3f, the best so far: %s", step, self.best, self.run_path / BEST_DIR)
        return values
