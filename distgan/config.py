"""The training config: typed dataclasses, loaded from YAML plus `key=value` overrides.

OmegaConf checks every key and type against the dataclasses before any work
starts; errors name the key and the nearest valid one. The resolved config is
saved with the run (`runs/NAME/config.yaml`).
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from distgan.augment import parse_policy
from distgan.content_loss import CONTENT_LOSSES, VGG_LAYERS, VGGWeightsError, find_vgg19_weights
from distgan.losses import LOSS_KINDS
from distgan.models import ModelConfig, get_family
from distgan.schedule import SCHEDULES


@dataclass
class DataConfig:
    path: str = MISSING  # directory or URL holding dataset.json and the shards
    shards: str | None = None  # explicit shard URLs (brace ranges, pipe:, http); default: beside dataset.json
    split: str = "train"
    batch_size: int = 128  # per rank; the global batch is batch_size x world size
    num_workers: int = 2
    shuffle_buffer: int = 10_000
    on_corrupt: str = "raise"  # raise | skip (skipped samples are counted and logged)


@dataclass
class LossConfig:
    kind: str = "bce"  # bce (non-saturating) | hinge | wgan-gp | lsgan
    real_label: float = 1.0  # 0.9 = one-sided label smoothing (bce, lsgan)
    gp_weight: float = 10.0  # wgan-gp only
    d_steps: int = 1  # D updates per G update, each on a fresh real batch
    r1_gamma: float = 0.0  # R1 penalty gamma / 2 * E||grad_x D(x_real)||^2 (Mescheder et al. 2018); 0 = off
    r1_every: int = 16  # lazy R1 (StyleGAN2): on one D step in r1_every, weighted x r1_every
    # Image-conditioned families (srgan): G's loss vs the real image, and the GAN's share of it.
    content: str = "mse"  # mse | l1 | features (VGG19 feature maps, distgan/content_loss.py)
    adv_weight: float = 1e-3  # x the adversarial G loss (Ledig et al. 2017)
    vgg_layer: str = "vgg54"  # features: vgg54 (after conv5_4, the paper's SRGAN) | vgg22
    vgg_weights: str = ""  # features: torchvision's vgg19-dcbb9e9d.pth; "" = $DISTGAN_VGG19 or the caches

    style_mixing: float = 0.0  # style-based G (stylegan2, whose default is 0.9): P(a batch mixes two z's styles)
    pl_weight: float = 0.0  # style-based G (stylegan2: 2): path-length regularisation weight; 0 = off
    pl_every: int = 4  # lazy path-length regularisation: on the G steps where step % pl_every == 0, x pl_every


@dataclass
class OptimConfig:
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    g_betas: tuple[float, float] = (0.5, 0.999)
    d_betas: tuple[float, float] = (0.5, 0.999)
    grad_clip: float = 0.0  # max grad norm per network; 0 = off
    ema_decay: float = 0.999  # EMA of G's weights for samples and export; warmed up: min(decay, (1+t)/(10+t))
    lr_scaling: str = "none"  # none | linear (lr x world size) | sqrt
    schedule: str = "constant"  # constant | warmup (linear) | cosine (after the warm-up, down to min_lr_ratio)
    warmup_steps: int = 0  # linear warm-up steps of warmup and cosine
    min_lr_ratio: float = 0.0  # cosine: the final lr as a share of the initial one


@dataclass
class AugConfig:
    """Differentiable augmentation of D's input (distgan/augment.py, distgan/ada.py)."""

    policy: str = ""  # comma list of color, translation, cutout; "" = off
    p: float = 1.0  # probability of each op per image; with adaptive, the initial p
    adaptive: bool = False  # ADA: tune p so that E[sign(D(real))] stays at target
    target: float = 0.6  # ADA's target for E[sign(D(real))]
    speed_images: int = 500_000  # real images for the adaptive p to cross [0, 1]
    interval: int = 4  # adjust the adaptive p every N steps


@dataclass
class TrainConfig:
    steps: int = 5_000  # G updates
    pretrain_steps: int = 0  # srgan: the first steps train G on the content loss alone (adversarial weight 0)
    mixed_precision: str | None = None  # null = the launcher's (fp32 if it says nothing) | no (fp32) | bf16 | fp16
    compile: bool = False  # torch.compile G and D
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead = CUDA graphs of the compiled pieces
    cuda_graph: bool | None = None  # replay the whole step as one CUDA graph; null (auto) = on for one GPU process
    channels_last: bool = True
    tf32: bool = True
    cudnn_benchmark: bool = True  # every batch has the same shape: let cuDNN time its algorithms once
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 1_000
    keep_checkpoints: int = 3
    resume: str = "auto"  # auto (newest complete checkpoint) | none | a checkpoint path
    allow_config_change: bool = False  # resume although the setup differs from the run's (recorded in the run)
    force_unlock: bool = False  # take the run directory's LOCK from a holder that looks alive (a human decided)
    sync_every: int = 20  # steps between the host collectives that share stop requests and data errors
    levels: Any = "all"  # model.arch lapgan: the pyramid levels this launch trains, "all" or a list (0 = finest)


@dataclass
class LogConfig:
    log_with: str = "none"  # none | wandb | tensorboard
    project: str = "distgan"
    sample_grid: int = 64  # fixed-noise images per grid


@dataclass
class EvalConfig:
    """Evaluation during training (distgan/metrics/during_training.py); off unless `every` > 0."""

    every: int = 0  # evaluate every N steps; 0 = off
    n: int = 2000  # generated images per evaluation, split evenly over the ranks
    features: str = "domain"  # domain (the dataset's classifier: fast, fine on CPUs) | inception
    domain_model: str = "auto"  # classifier directory; auto = ~/.cache/distgan/domain/DATASET
    split: str = "test"  # the real images compared with
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # fid, kid
    batch_size: int = 500  # generated images per forward pass
    keep_best: bool = True  # keep runs/NAME/generator_best/ at the lowest FID


@dataclass
class Config:
    name: str = "run"
    run_dir: str = "runs"  # the run lives in run_dir/name
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) / self.name


CHOICES = {
    "data.on_corrupt": ("raise", "skip"),
    "loss.kind": LOSS_KINDS,
    "optim.lr_scaling": ("none", "linear", "sqrt"),
    "optim.schedule": SCHEDULES,
    "train.mixed_precision": (None, "no", "bf16", "fp16"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "log.log_with": ("none", "wandb", "tensorboard"),
    "eval.features": ("domain", "inception"),
    "loss.content": CONTENT_LOSSES,
    "loss.vgg_layer": tuple(VGG_LAYERS),
}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _all_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        value = node[key] if not OmegaConf.is_missing(node, key) else None
        full = f"{prefix}{key}"
        keys.append(full)
        if OmegaConf.is_dict(value):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _explain(exc: OmegaConfBaseException, schema) -> str:
    key = getattr(exc, "full_key", None) or ""
    message = str(exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError) and key:
        near = difflib.get_close_matches(key, _all_keys(schema), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"unknown config key {key!r}{hint}"
    return f"config key {key!r}: {message}" if key else message


def _family_schema(schema, arch: str | None) -> None:
    """The `model:` section typed by the family `model.arch` names (its own keys), and the family's defaults
    for other sections (loss kind, lrs, ...) put under the user's values, in place."""
    try:
        family = get_family(str(arch or schema.model.arch))
    except ValueError as exc:
        raise ConfigError(f"config key 'model.arch': {exc}") from None
    schema.model = OmegaConf.structured(family.config)
    for key, value in family.defaults.items():
        OmegaConf.update(schema, key, value, merge=False)


def read_yaml_mapping(path: Path) -> dict:
    """A config file's sections: YAML (safe loader) in UTF-8, a mapping with string keys; else a ConfigError naming
    the file (and the line, for YAML's own errors)."""
    try:
        tree = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}:{where} not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict) or not all(isinstance(k, str) for k in tree):
        raise ConfigError(f"config file {path}: expected sections (model:, data:, train:, ...), got "
                          f"{type(tree).__name__} {str(tree)[:60]!r}")
    return tree


def merge_tree(merged, tree: dict, path: Path):
    """A config file's values merged in key by key, so that a value OmegaConf cannot take (it raises TypeError or
    ValueError there, not its own errors) is named by its key."""
    for section, values in tree.items():
        for key, value in (values.items() if isinstance(values, dict) and values else [(None, values)]):
            name = section if key is None else f"{section}.{key}"
            try:
                merged = OmegaConf.merge(merged, OmegaConf.create({section: value if key is None else {key: value}}))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"config file {path}: config key {name!r}: {exc}") from None
    return merged


def _arch_named(tree: dict, overrides) -> str | None:
    """The family the file or the overrides name (an override wins), read before the schema is typed by it."""
    arch = OmegaConf.select(overrides, "model.arch", default=None)
    model = tree.get("model")
    return arch if arch is not None else (model.get("arch") if isinstance(model, dict) else None)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """YAML file + `a.b=value` overrides -> a validated Config (the `model:` keys of the family it names)."""
    schema = OmegaConf.structured(Config)
    try:
        tree = {}
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file {path} not found")
            tree = read_yaml_mapping(Path(path))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
        dotlist = OmegaConf.from_dotlist(list(overrides))
        _family_schema(schema, _arch_named(tree, dotlist))
        merged = merge_tree(schema, tree, Path(str(path)))
        for item in overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, schema)) from None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks the types alone cannot express."""
    if cfg.train.mixed_precision == "False":  # YAML 1.1 reads a bare `no` as false
        cfg.train.mixed_precision = "no"
    for key, valid in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in valid:
            near = difflib.get_close_matches(str(value), [v for v in valid if v is not None], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(valid)}{hint}")
    positive = {"data.batch_size": cfg.data.batch_size, "train.steps": cfg.train.steps,
                "loss.d_steps": cfg.loss.d_steps, "train.log_every": cfg.train.log_every,
                "train.sample_every": cfg.train.sample_every,
                "train.checkpoint_every": cfg.train.checkpoint_every,
                "train.keep_checkpoints": cfg.train.keep_checkpoints,
                "train.max_bad_steps": cfg.train.max_bad_steps, "log.sample_grid": cfg.log.sample_grid,
                "train.sync_every": cfg.train.sync_every}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {value}")
    non_negative = {"data.num_workers": cfg.data.num_workers, "data.shuffle_buffer": cfg.data.shuffle_buffer,
                    "optim.grad_clip": cfg.optim.grad_clip, "loss.gp_weight": cfg.loss.gp_weight}
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {value}")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError(f"config key 'optim.ema_decay' must be in [0, 1), got {cfg.optim.ema_decay}")
    if cfg.loss.kind in ("hinge", "wgan-gp") and cfg.loss.real_label != 1.0:
        raise ConfigError(f"config key 'loss.real_label': label smoothing does not apply to {cfg.loss.kind}")
    if cfg.eval.every < 0 or cfg.eval.n < 2 or cfg.eval.batch_size < 1:
        raise ConfigError(f"config keys 'eval.every' >= 0, 'eval.n' >= 2, 'eval.batch_size' >= 1; got "
                          f"{cfg.eval.every}, {cfg.eval.n}, {cfg.eval.batch_size}")
    if "fid" not in cfg.eval.metrics or not set(cfg.eval.metrics) <= {"fid", "kid"}:
        raise ConfigError(f"config key 'eval.metrics': {cfg.eval.metrics} must hold 'fid' and may add 'kid'")
    if cfg.train.cuda_graph is True and cfg.train.compile:
        raise ConfigError("config keys 'train.cuda_graph' and 'train.compile' exclude each other: the whole-step "
                          "graph already replays every kernel of the step")
    _check_combinations(cfg)
    _check_content_loss(cfg)
    if cfg.data.path in ("", "???"):
        raise ConfigError("config key 'data.path' is required (the directory with dataset.json)")
    _check_augmentation_r1_schedule(cfg)


def _check_augmentation_r1_schedule(cfg: Config) -> None:
    """Augmentation, R1 and the lr schedule."""
    try:
        parse_policy(cfg.aug.policy)
    except ValueError as exc:
        raise ConfigError(f"config key 'aug.policy': {exc}") from None
    if not 0.0 <= cfg.aug.p <= 1.0:
        raise ConfigError(f"config key 'aug.p' must be in [0, 1], got {cfg.aug.p}")
    if cfg.aug.adaptive and not cfg.aug.policy.strip():
        raise ConfigError("config key 'aug.adaptive' needs augmentations to adapt: set 'aug.policy'")
    if cfg.aug.adaptive and cfg.loss.kind == "wgan-gp":
        raise ConfigError("config key 'aug.adaptive': E[sign(D(real))] needs a D with a decision threshold "
                          "(bce, hinge, lsgan), not wgan-gp")
    if not -1.0 < cfg.aug.target < 1.0:
        raise ConfigError(f"config key 'aug.target' must be in (-1, 1) (E[sign(D(real))]), got {cfg.aug.target}")
    for key, value in {"aug.speed_images": cfg.aug.speed_images, "aug.interval": cfg.aug.interval,
                       "loss.r1_every": cfg.loss.r1_every}.items():
        if value < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {value}")
    if cfg.loss.r1_gamma < 0:
        raise ConfigError(f"config key 'loss.r1_gamma' must be >= 0, got {cfg.loss.r1_gamma}")
    if not 0 <= cfg.optim.warmup_steps <= cfg.train.steps:
        raise ConfigError(f"config key 'optim.warmup_steps' must be in [0, train.steps={cfg.train.steps}], "
                          f"got {cfg.optim.warmup_steps}")
    if cfg.optim.schedule == "warmup" and cfg.optim.warmup_steps < 1:
        raise ConfigError("config key 'optim.warmup_steps' must be >= 1 with optim.schedule=warmup")
    if cfg.optim.schedule == "constant" and cfg.optim.warmup_steps:
        raise ConfigError("config key 'optim.warmup_steps' has no effect with optim.schedule=constant; "
                          "use optim.schedule=warmup")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"config key 'optim.min_lr_ratio' must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    _check_style_regularisers(cfg)


def _check_style_regularisers(cfg: Config) -> None:
    """Style mixing and path-length regularisation (a style-based G's; other families ignore them)."""
    loss = cfg.loss
    if not 0.0 <= loss.style_mixing <= 1.0:
        raise ConfigError(f"config key 'loss.style_mixing' must be in [0, 1] (a probability), got {loss.style_mixing}")
    if loss.pl_weight < 0:
        raise ConfigError(f"config key 'loss.pl_weight' must be >= 0, got {loss.pl_weight}")
    if loss.pl_every < 1:
        raise ConfigError(f"config key 'loss.pl_every' must be >= 1, got {loss.pl_every}")
    group, batch = getattr(cfg.model, "mbstd_group", 0), cfg.data.batch_size  # a D with minibatch stddev
    if group > 1 and batch > group and batch % group:
        raise ConfigError(f"config key 'data.batch_size' ({batch}) must be a multiple of 'model.mbstd_group' "
                          f"({group}): D scores cat(real, fake) in groups of {group} consecutive images")


def _check_content_loss(cfg: Config) -> None:
    """The image-conditioned keys: weights and steps in range, the VGG weights there before any work starts."""
    if cfg.loss.adv_weight < 0:
        raise ConfigError(f"config key 'loss.adv_weight' must be >= 0, got {cfg.loss.adv_weight}")
    if not 0 <= cfg.train.pretrain_steps <= cfg.train.steps:
        raise ConfigError(f"config key 'train.pretrain_steps' must be in [0, train.steps={cfg.train.steps}], "
                          f"got {cfg.train.pretrain_steps}")
    if cfg.loss.content == "features":
        try:
            find_vgg19_weights(cfg.loss.vgg_weights or None)
        except VGGWeightsError as exc:
            raise ConfigError(f"config key 'loss.content'=features: {exc}") from None


def _check_combinations(cfg: Config) -> None:
    """Loss x discriminator options that cannot train correctly, refused with the keys named."""
    m, loss = cfg.model, cfg.loss
    d_batchnorm = get_family(m.arch).d_batchnorm(m)
    if loss.kind == "wgan-gp" and d_batchnorm:
        raise ConfigError("config keys 'loss.kind'=wgan-gp and 'model.d_batchnorm'=true: the gradient penalty "
                          "is per sample, but a BatchNorm D makes each sample's score depend on its batch; set "
                          "model.d_batchnorm=false (or model.spectral_norm=true)")
    if loss.r1_gamma > 0 and d_batchnorm:
        raise ConfigError("config keys 'loss.r1_gamma' > 0 and 'model.d_batchnorm'=true: R1 penalises each real "
                          "image's gradient, but a BatchNorm D makes each score depend on its batch; set "
                          "model.d_batchnorm=false (or model.spectral_norm=true)")
    if loss.kind == "wgan-gp" and loss.gp_weight == 0:
        raise ConfigError("config keys 'loss.kind'=wgan-gp and 'loss.gp_weight'=0: without its penalty the "
                          "critic is unconstrained and its scores diverge; use gp_weight 10 (the paper's)")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_hash(cfg: Config) -> str:
    """Identifies a training setup in exported models and evaluation results."""
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]
