"""Config keys of augmentation, R1 and the lr schedule: defaults, the small-data config, refusals naming the key."""

from __future__ import annotations

import pytest

from conftest import REPO
from distgan.config import ConfigError, load_config

BASE = REPO / "configs/fashion_dcgan.yaml"


def test_defaults_leave_training_as_it_was():
    cfg = load_config(BASE)
    assert (cfg.aug.policy, cfg.aug.adaptive, cfg.loss.r1_gamma, cfg.optim.schedule) == ("", False, 0.0, "constant")


def test_small_data_config_loads():
    cfg = load_config(REPO / "configs/small_data.yaml")
    assert cfg.aug.policy == "color,translation,cutout" and cfg.aug.adaptive and cfg.aug.p == 0.0
    assert cfg.loss.r1_gamma > 0 and cfg.loss.r1_every == 16 and not cfg.model.d_batchnorm


def test_schedule_keys_load():
    cfg = load_config(BASE, ["optim.schedule=cosine", "optim.warmup_steps=500", "optim.min_lr_ratio=0.1"])
    assert (cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio) == ("cosine", 500, 0.1)


@pytest.mark.parametrize("overrides, message", [
    (["aug.policy=color,translaton"], r"'aug.policy'.*'translaton' \(did you mean 'translation'\?\)"),
    (["aug.p=1.5"], r"'aug.p' must be in \[0, 1\], got 1.5"),
    (["aug.p=-0.1"], r"'aug.p' must be in \[0, 1\]"),
    (["aug.adaptive=true"], r"'aug.adaptive' needs augmentations"),
    (["aug.adaptive=true", "aug.policy=color", "loss.kind=wgan-gp"], r"'aug.adaptive'.*not wgan-gp"),
    (["aug.target=1.2"], r"'aug.target' must be in \(-1, 1\)"),
    (["aug.speed_images=0"], r"'aug.speed_images' must be >= 1"),
    (["aug.interval=0"], r"'aug.interval' must be >= 1"),
    (["loss.r1_gamma=-1"], r"'loss.r1_gamma' must be >= 0, got -1"),
    (["loss.r1_every=0"], r"'loss.r1_every' must be >= 1, got 0"),
    (["optim.schedule=cosin"], r"'optim.schedule'.*did you mean 'cosine'"),
    (["optim.schedule=warmup"], r"'optim.warmup_steps' must be >= 1 with optim.schedule=warmup"),
    (["optim.warmup_steps=10"], r"'optim.warmup_steps' has no effect with optim.schedule=constant"),
    (["optim.schedule=cosine", "optim.warmup_steps=20000"], r"'optim.warmup_steps' must be in \[0, train.steps"),
    (["optim.schedule=cosine", "optim.min_lr_ratio=2"], r"'optim.min_lr_ratio' must be in \[0, 1\]"),
    (["aug.polcy=color"], r"unknown config key 'aug.polcy'; did you mean 'aug.policy'"),
])
def test_bad_values_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(BASE, overrides)
