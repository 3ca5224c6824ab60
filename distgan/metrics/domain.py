"""A small CNN classifier of the dataset itself, whose penultimate layer gives a fast "domain FID".

Inception at 299x299 runs at a few images a second on a CPU and knows nothing
of 28x28 clothing; this net reads the images at their own size, trains in
minutes on the training split, and gives 128-d features (or logits, for a
domain Inception Score). Saved as safetensors weights + a JSON spec, never a
pickle.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from distgan.data import DataError, ShardLoader
from distgan.data.shards import file_digest
from distgan.metrics.features import check_images, user_cache

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "classifier.json"


@dataclass
class DomainSpec:
    """Everything needed to rebuild the net, plus how it was trained (JSON beside the weights)."""

    dataset: str
    classes: list[str]
    image_shape: tuple[int, int, int]  # (H, W, C)
    feature_dim: int = 128
    record: dict[str, Any] = field(default_factory=dict)  # training figures, for the reader


class DomainClassifier(nn.Module):
    """Two conv blocks and a 128-d bottleneck; takes uint8 NHWC so training and scoring see the same input."""

    def __init__(self, spec: DomainSpec):
        super().__init__()
        self.spec = spec
        channels = spec.image_shape[2]
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),
            nn.Linear(64 * 7 * 7, spec.feature_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(spec.feature_dim, len(spec.classes)))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return self.body(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))


class DomainFeatures:
    """Feature extractor over a trained classifier: penultimate features, or logits for a domain IS."""

    def __init__(self, model: DomainClassifier, digest: str, output: Literal["features", "logits"] = "features",
                 batch_size: int = 1024):
        if output not in ("features", "logits"):
            raise ValueError(f"output must be 'features' or 'logits', not {output!r}")
        self.model, self.output, self.batch_size = model.eval(), output, batch_size
        self.dim = model.spec.feature_dim if output == "features" else len(model.spec.classes)
        self.name = f"domain-cnn-{model.spec.dataset}:{digest[:12]}:{output}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        if tuple(images.shape[1:]) != tuple(self.model.spec.image_shape):
            raise ValueError(f"images {tuple(images.shape[1:])}, classifier trained on {self.model.spec.image_shape}")
        device = next(self.model.parameters()).device
        run = self.model.embed if self.output == "features" else self.model
        return torch.cat([run(chunk.to(device)).float().cpu() for chunk in images.split(self.batch_size)])


def _loader(data: str | Path, split: str, batch_size: int, train: bool, seed: int) -> ShardLoader:
    return ShardLoader(str(data), split, batch_size, seed=seed, num_workers=0,
                       shuffle_buffer=10_000 if train else 0, drop_last=train)


@torch.inference_mode()
def accuracy(model: DomainClassifier, data: str | Path, split: str = "test", batch_size: int = 1024) -> float:
    """Top-1 accuracy on a split of the shards."""
    model.eval()
    right = total = 0
    for batch in _loader(data, split, batch_size, train=False, seed=0).epoch(0):
        right += int((model(batch.images).argmax(1) == batch.labels).sum())
        total += len(batch)
    return right / total


def train_domain_classifier(
    data: str | Path, *, epochs: int = 4, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
    train_split: str = "train", test_split: str | None = "test", log: bool = False,
) -> DomainClassifier:
    """Train on `train_split` (Adam, one-cycle schedule); `spec.record` keeps time and test accuracy."""
    loader = _loader(data, train_split, batch_size, train=True, seed=seed)
    manifest = loader.manifest
    if not manifest.classes:
        raise DataError(f"{data}: dataset {manifest.name!r} has no classes; a domain classifier needs labels")
    torch.manual_seed(seed)
    model = DomainClassifier(DomainSpec(manifest.name, list(manifest.classes), manifest.image_shape))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(loader))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch in loader.epoch(epoch):
            if int(batch.labels.min()) < 0:
                raise DataError(f"{data}: split {train_split!r} has unlabeled images (label -1)")
            loss = F.cross_entropy(model(batch.images), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if log:
            print(f"epoch {epoch + 1}/{epochs}: last loss {loss.item():.4f}, {time.perf_counter() - start:.0f} s")
    model.eval()
    model.spec.record = {"train_split": train_split, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                         "seed": seed, "train_seconds": round(time.perf_counter() - start, 1),
                         "threads": torch.get_num_threads()}
    if test_split is not None:
        model.spec.record[f"{test_split}_accuracy"] = accuracy(model, data, test_split)
    return model


def save_domain_classifier(model: DomainClassifier, directory: str | Path) -> Path:
    """Write model.safetensors + classifier.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "distgan-domain-classifier"})
    (directory / SPEC_NAME).write_text(json.dumps(asdict(model.spec), indent=2) + "\n")
    return directory


def load_domain_classifier(directory: str | Path, device: str | torch.device = "cpu") -> tuple[DomainClassifier, str]:
    """The classifier saved in `directory` (eval mode) and the sha256 of its weights, its identity."""
    directory = Path(directory)
    weights, spec_path = directory / WEIGHTS_NAME, directory / SPEC_NAME
    for path in (weights, spec_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; train one with `python -m distgan.metrics train-domain`")
    raw = json.loads(spec_path.read_text())
    raw["image_shape"] = tuple(raw["image_shape"])
    model = DomainClassifier(DomainSpec(**raw))
    model.load_state_dict(load_file(weights, device="cpu"), strict=True)
    return model.to(device).eval(), file_digest(weights)


def default_domain_dir(dataset: str) -> Path:
    """Where `train-domain` puts a dataset's classifier unless told otherwise, and where "auto" looks."""
    return user_cache() / "domain" / dataset


def find_domain_model(dataset: str, directory: str | Path | None = None) -> Path:
    """`directory` (must hold a classifier), or the default one of `dataset`; the error says how to make one."""
    path = Path(directory).expanduser() if directory not in (None, "", "auto") else default_domain_dir(dataset)
    if not (path / WEIGHTS_NAME).is_file() or not (path / SPEC_NAME).is_file():
        where = "" if directory not in (None, "", "auto") else f" (the default place for dataset {dataset!r})"
        raise FileNotFoundError(
            f"no domain classifier in {path}{where}: it needs {WEIGHTS_NAME} and {SPEC_NAME}; train one with "
            f"`python -m distgan.metrics train-domain --data DATA_DIR` (writes {default_domain_dir(dataset)}) "
            "or pass its directory"
        )
    return path


def domain_features(directory: str | Path, output: Literal["features", "logits"] = "features",
                    device: str | torch.device = "cpu") -> DomainFeatures:
    """Feature extractor from a saved classifier."""
    model, digest = load_domain_classifier(directory, device)
    return DomainFeatures(model, digest, output)
