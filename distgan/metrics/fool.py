"""The fool rate: how the trained discriminator of a run judges held-out real images and generated ones.

D comes from the newest checkpoint of the run, rebuilt from the
`DiscriminatorSpec` saved beside its weights (`distgan.artifacts.load_discriminator`),
and scored in eval mode (dropout off, BatchNorm running statistics). Its decision threshold
is the loss kind's, as in training (`distgan.losses.decision_threshold`).
Both sides are fed as uint8 images through `to_device`, the way training feeds
real images, so a generator is judged on the same quantised pixels the feature
extractors see.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distgan.artifacts import DISCRIMINATOR_SPEC, list_checkpoints, load_discriminator
from distgan.data import ShardLoader, to_device
from distgan.losses import decision_threshold
from distgan.models import Discriminator

class FoolRateError(FileNotFoundError):
    """The run has no checkpoint with a discriminator."""


def has_discriminator(run: Path) -> bool:
    checkpoints = list_checkpoints(Path(run))
    return bool(checkpoints) and (checkpoints[-1] / DISCRIMINATOR_SPEC).is_file()


def load_run_discriminator(run: str | Path, device: str | torch.device = "cpu") -> tuple[Discriminator, str, Path]:
    """(D in eval mode, loss kind, checkpoint) from the newest complete checkpoint of `run`."""
    run = Path(run)
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        raise FoolRateError(f"{run}/checkpoints: no complete checkpoint; the fool rate needs the trained D")
    checkpoint = checkpoints[-1]
    state = checkpoint / "state.json"
    kind = json.loads(state.read_text()).get("loss_kind")
    if kind is None:
        raise FoolRateError(f"{state}: no loss_kind; written by an older distgan, whose D cannot be rebuilt")
    try:
        D = load_discriminator(checkpoint)
    except FileNotFoundError as exc:
        raise FoolRateError(str(exc)) from exc
    return D.to(device), kind, checkpoint


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

    def add_real_split(self, data: str | Path, split: str, n: int, batch_size: int) -> None:
        """The first `n` images of `split` of the prepared dataset `data`, in their stored order."""
        loader = ShardLoader(str(data), split, batch_size, num_workers=0, shuffle_buffer=0, drop_last=False)
        seen = 0
        for batch in loader.epoch(0):
            self.add_real(batch.images[: n - seen], batch.labels[: n - seen])
            seen += len(batch.images[: n - seen])
            if seen >= n:
                break

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
