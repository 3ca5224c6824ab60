"""The fool rate: how the trained discriminator of a run judges held-out real images and generated ones.

D comes from the newest checkpoint of the run (`accelerator.save_state` wrote
G as `model.safetensors` and D as `model_1.safetensors`, in the order the
trainer prepared them), rebuilt from the run's `config.yaml`, and scored in
eval mode (dropout off, BatchNorm running statistics). Its decision threshold
is the loss kind's, as in training (`distgan.losses.decision_threshold`).
Both sides are fed as uint8 images through `to_device`, the way training feeds
real images, so a generator is judged on the same quantised pixels the feature
extractors see.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from distgan.checkpoint import list_checkpoints
from distgan.config import load_config
from distgan.data import to_device
from distgan.losses import decision_threshold
from distgan.models import Discriminator, build_discriminator

D_FILES = ("model_1.safetensors", "pytorch_model_1.bin")  # safetensors unless save_state was told otherwise


class FoolRateError(FileNotFoundError):
    """The run has no checkpoint with a discriminator (or no config to rebuild it)."""


def has_discriminator(run: Path) -> bool:
    checkpoints = list_checkpoints(Path(run))
    return bool(checkpoints) and any((checkpoints[-1] / name).is_file() for name in D_FILES)


def load_discriminator(run: str | Path, device: str | torch.device = "cpu") -> tuple[Discriminator, str, Path]:
    """(D in eval mode, loss kind, checkpoint) from the newest complete checkpoint of `run`."""
    run = Path(run)
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        raise FoolRateError(f"{run}/checkpoints: no complete checkpoint; the fool rate needs the trained D")
    checkpoint = checkpoints[-1]
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise FoolRateError(f"{config_path}: missing; it says which discriminator to rebuild")
    cfg = load_config(config_path)
    generator_json = run / "generator" / "generator.json"
    if not generator_json.is_file():
        raise FoolRateError(f"{generator_json}: missing; it holds the image shape and class count")
    spec = json.loads(generator_json.read_text())["spec"]
    D = build_discriminator(cfg.model, spec["channels"], spec["height"], spec["width"],
                            spec["num_classes"] if spec["conditional"] else 0)
    for name in D_FILES:
        path = checkpoint / name
        if path.is_file():
            state = load_file(str(path)) if name.endswith(".safetensors") else \
                torch.load(path, map_location="cpu", weights_only=True)
            break
    else:
        raise FoolRateError(f"{checkpoint}: none of {D_FILES}; not a distgan training checkpoint")
    try:
        D.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: does not fit the discriminator of {config_path}: {str(exc)[:400]}") from exc
    return D.to(device).eval(), cfg.loss.kind, checkpoint


class FoolRate:
    """Collects D's scores batch by batch; `result()` gives accuracies and the fooled fraction."""

    def __init__(self, D: Discriminator, kind: str, device: str | torch.device = "cpu"):
        self.D, self.kind, self.device = D, kind, torch.device(device)
        self.real: list[torch.Tensor] = []
        self.fake: list[torch.Tensor] = []

    @torch.inference_mode()
    def _score(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.D.projection is None:
            labels = None
        elif labels is None:
            raise ValueError("this discriminator is conditional: the images need their labels")
        x = to_device(images, self.device)
        return self.D(x, labels.to(self.device) if labels is not None else None).float().cpu()

    def add_real(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.real.append(self._score(images, labels))

    def add_fake(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.fake.append(self._score(images, labels))

    def result(self) -> dict[str, float]:
        if not self.real or not self.fake:
            raise ValueError("the fool rate needs real and generated images")
        real, fake = torch.cat(self.real), torch.cat(self.fake)
        threshold = decision_threshold(self.kind, real)
        real_right = (real > threshold).float().mean().item()
        fooled = (fake > threshold).float().mean().item()
        return {"fool/d_accuracy": (real_right + 1 - fooled) / 2, "fool/real_accuracy": real_right,
                "fool/fake_accuracy": 1 - fooled, "fool/fooled": fooled}
