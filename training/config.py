"""Training configuration: paper defaults, presets, YAML files and ``--set key=value`` overrides.

Every section forbids unknown keys, so a typo is an error that names the key (and suggests the
closest real one) rather than a silently ignored setting.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from s4seg.defaults import IMAGENET_MEAN, IMAGENET_STD
from s4seg.errors import ConfigError

from . import presets  # the YAML files ship in this package


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    kind: Literal["auto", "voc", "cityscapes", "context", "folder"] = "auto"
    root: str | None = None
    train_split: str | None = None  # None: the layout's own (train_aug for VOC, else train)
    val_split: str | None = None  # None: val
    labeled_ratio: str = "1/8"
    split_seed: int = 0
    split_file: str | None = None  # a saved split; overrides labeled_ratio/split_seed
    crop_size: tuple[int, int] = (321, 321)
    scale_range: tuple[float, float] = (0.5, 1.5)
    hflip: bool = True
    # RGB, on [0, 1] pixels. Recorded in every checkpoint; export and serving use the recorded one.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int = 2
    # Validation and `s4seg evaluate`: None, the whole image at once (the paper); N, the softmax
    # summed over N x N windows a third apart, the last at the border (UniMatch V2 on Cityscapes)
    eval_window: PositiveInt | None = None

    @field_validator("labeled_ratio", mode="before")
    @classmethod
    def _ratio_text(cls, value: Any) -> str:
        from .data.split import format_ratio, parse_ratio

        return format_ratio(parse_ratio(value))


class ModelConfig(Section):
    # deeplabv2: the paper's (dilated ResNet at stride 8, summed ASPP); deeplabv3plus: ASPP with
    # image pooling and a stride-4 decoder (the segmenter of current recipes, e.g. UniMatch);
    # dpt: a ViT (model.backbone) with a DPT head (UniMatch V2's segmenter).
    architecture: Literal["deeplabv2", "deeplabv3plus", "dpt"] = "deeplabv2"
    backbone_depth: Literal[18, 34, 50, 101] = 101  # the ResNets (deeplabv2, deeplabv3plus)
    # dpt's encoder: timm's DINOv2 ViT-S/14, B/14, L/14; vit_tiny_patch14 (4 narrow blocks,
    # random weights only) for tests and CPU demos
    backbone: Literal[
        "vit_small_patch14_dinov2",
        "vit_base_patch14_dinov2",
        "vit_large_patch14_dinov2",
        "vit_tiny_patch14",
    ] = "vit_small_patch14_dinov2"
    grad_checkpointing: bool = False  # dpt: recompute the ViT blocks in backward (ViT-L at 518+)
    aspp_rates: tuple[int, ...] = (6, 12, 18, 24)  # DeepLabv2's (v3+: 6/12/18 at stride 16)
    output_stride: Literal[8, 16] = 16  # DeepLabv3+ only (DeepLabv2 is stride 8)
    freeze_bn_affine: bool = True
    # imagenet: torchvision's weights of this depth (torch's cache, downloaded when online); or a
    # local torchvision ResNet .pth; dinov2 (dpt): the ViT's DINOv2 weights from the Hugging Face
    # or torch cache (never downloaded), or a Meta/timm file; None: random init
    pretrained_backbone: str | None = None


class OptimConfig(Section):
    # sgd: the paper's (momentum, nesterov off); adamw: UniMatch V2's (betas, decoupled decay)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    head_lr_mult: float = 10.0
    poly_power: float = 0.9


class GanConfig(Section):
    """s4GAN (paper section 3.1, hyper-parameters of section 4.1.3)."""

    losses: Literal["ce", "ce+sgan", "ce+fm", "ce+fm+st"] = "ce+fm+st"  # Table 6 rows
    lambda_fm: float = 0.1
    lambda_st: float = 1.0
    lambda_adv: float = 0.01  # only for ce+sgan; the paper gives none, 0.01 is Hung et al.'s
    gamma: float = 0.6  # self-training threshold on D's score (0.7 for Cityscapes)
    unlabeled_batch_size: PositiveInt | None = None  # None: train.batch_size
    d_lr: float = 1e-4  # Adam, poly(0.9) (1e-5 for Cityscapes)
    d_betas: tuple[float, float] = (0.9, 0.99)
    d_dropout: float = 0.5
    d_dropout_after_last: bool = True  # the paper; the authors' code has none after the 4th conv
    # D's view of the pixels a crop padded: paper: real maps all-zero there (one-hot of the
    # ignore label), fake maps the softmax (a free cue: any zero vector is real); zero: the fake
    # maps zeroed where their crop is padded too, so padding tells D nothing.
    d_ignore: Literal["paper", "zero"] = "paper"
    log_history_every: PositiveInt = 10  # rows of d_scores.csv / the D-score plot


class MlmtConfig(Section):
    """MLMT, the Mean-Teacher multi-label classifier (paper section 3.2)."""

    depth: Literal[18, 34, 50, 101] = 101
    pretrained_backbone: str | None = None  # as model.pretrained_backbone
    input_size: PositiveInt = 320
    lr: float = 3e-2  # SGD nesterov, cosine to lr_min
    lr_min: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-5
    labeled_batch_size: PositiveInt = 16
    unlabeled_batch_size: PositiveInt = 80
    # mse: eq. 6, squared L2 over classes; mse_mean: / num classes; cosine: the authors' code
    consistency: Literal["mse", "mse_mean", "cosine"] = "mse"
    consistency_weight: float = 1.0
    burn_in_epochs: float = 10.0  # consistency weight 0, epochs of the labeled set
    rampup_epochs: float = 5.0
    ema_max_decay: float = 0.999
    # The teacher's batch norm: "own" (train mode: its targets use batch statistics; its running
    # statistics are its own, gathered on the weak views; the Mean Teacher reference), "ema"
    # (eval mode: targets use running statistics averaged from the student's, like its weights),
    # "copy" (this project's first version: train mode, the student's statistics copied).
    teacher_bn: Literal["own", "ema", "copy"] = "ema"
    # Vertical flips and quarter turns on top of the paper's horizontal flip: only for data whose
    # classes do not depend on orientation (the synthetic shapes; not people or cars).
    geometric_augmentation: bool = False
    weak_labels: str | None = None  # JSON {image id: [class names]}: Table 7's weak-label mode


class UniMatchConfig(Section):
    """Weak-to-strong consistency with feature perturbation (UniMatch, Yang et al. CVPR 2023;
    ../shared/docs/modern-recipe-notes.md): the public recipe's values."""

    threshold: float = 0.95  # softmax confidence a pseudo-labeled pixel needs
    # fixed: every class at ``threshold`` (the public recipe); flexmatch: class-wise thresholds,
    # each class's scaled by how many pixels the model labels it confidently (FlexMatch,
    # Zhang et al. NeurIPS 2021; ``class_thresholds``), so rarely-sure classes get lower ones.
    threshold_rule: Literal["fixed", "flexmatch"] = "fixed"
    weight_strong: float = 0.5  # split over the two strong views (0.25 each)
    weight_fp: float = 0.5  # the feature-perturbed prediction
    fp_dropout: float = 0.5  # Dropout2d on the encoder's features
    unlabeled_batch_size: PositiveInt | None = None  # None: train.batch_size (at least 2)
    jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.25)  # p 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutmix_p: float = 0.5
    cutmix_area: tuple[float, float] = (0.02, 0.4)  # of the crop
    cutmix_aspect: tuple[float, float] = (0.3, 1 / 0.3)
    # The labeled loss: cross-entropy (the VOC recipe) or OHEM (the Cityscapes recipe: pixels
    # with their class's probability <= ohem_threshold, at least ohem_min_kept of them a batch).
    labeled_loss: Literal["ce", "ohem"] = "ce"
    ohem_threshold: float = 0.7
    ohem_min_kept: PositiveInt = 100_000
    # two: the public order, [x, u_w] (with the feature-perturbed decode) then [s1, s2], so the
    # labeled and weak batches have batch-norm statistics of their own (the author: strong views
    # "can severely affect the BN statistics"); one: a single forward over [u_w, x, s1, s2]
    # (s4seg before 2026-12-03, the synthetic-cpu study's).
    forward: Literal["two", "one"] = "two"
    # The final factor of (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) (V2: of L_x + L_u): the public
    # /2 halves the labeled step against a baseline at the same lr; 1.0 gives the baseline's.
    loss_scale: float = 0.5
    # UniMatch V2 (`s4seg train unimatch-v2`): the EMA teacher's top momentum, and complementary
    # dropout on the two strong views' ViT features (the V2 ablation: dropout moved elsewhere
    # costs 1.5-2.8 points)
    ema_max_decay: float = 0.996
    complementary_dropout: bool = True


class TrainConfig(Section):
    iterations: PositiveInt = 35000  # the paper (sec. 4.1.3): 35k for VOC and Cityscapes
    batch_size: PositiveInt = 8
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto = bf16 on CUDA, off on the CPU
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto = on for CUDA
    log_every: PositiveInt = 50
    val_every: PositiveInt = 5000  # the authors evaluate every 5k: low-label runs peak early
    val_max_images: PositiveInt | None = None
    checkpoint_every: PositiveInt = 1000  # overwrites <out_dir>/last.pt
    snapshot_every: PositiveInt | None = None  # also keeps <out_dir>/snapshots/iter_NNNNNN.pt
    out_dir: str | None = None  # None: runs/<preset or file name>-<trainer>


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    gan: GanConfig = GanConfig()
    mlmt: MlmtConfig = MlmtConfig()
    unimatch: UniMatchConfig = UniMatchConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _vit_crops_on_the_patch_grid(self) -> Config:
        if self.model.architecture == "dpt" and any(side % 14 for side in self.data.crop_size):
            raise ValueError(
                f"data.crop_size {list(self.data.crop_size)}: a ViT (model.architecture dpt) "
                "trains on crops whose sides are multiples of its patch, 14 (e.g. 518)"
            )
        return self


PRESETS = (
    "voc",
    "cityscapes",
    "context",
    "synthetic-quick",
    "quickstart",
    "voc-unimatch",
    "cityscapes-unimatch",
    "synthetic-dense",
    "synthetic-vit-tiny",
    "voc-unimatch-v2",
    "cityscapes-unimatch-v2",
)


def _preset_text(name: str) -> str:
    return resources.files(presets).joinpath(f"{name}.yaml").read_text()


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections (data, model, optim, gan, mlmt, train)"
        )
    return data


def raw_config(name_or_path: str) -> dict:
    """A preset name or a YAML file; a file may say ``extends: <preset or file>``."""
    if name_or_path in PRESETS:
        data, source = _read_yaml(_preset_text(name_or_path), f"preset {name_or_path}"), None
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"config '{name_or_path}' is neither a preset ({', '.join(PRESETS)}) nor a file"
            )
        data, source = _read_yaml(path.read_text(), str(path)), path
    parent = data.pop("extends", None)
    if parent:
        if source is not None and parent not in PRESETS:
            parent = str((source.parent / parent).resolve())
        data = _deep_merge(raw_config(parent), data)
    return data


def _all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _all_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``section.key=value`` pairs; values are parsed as YAML (so 1e-3, true, [1, 2] work)."""
    data = _deep_merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"--set key '{key}' must be section.name, e.g. train.iterations")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        data.setdefault(parts[0], {})
        if not isinstance(data[parts[0]], dict):
            raise ConfigError(f"config section '{parts[0]}' must be a mapping")
        data[parts[0]][parts[1]] = value
    return data


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"] if not isinstance(p, int))
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, _all_keys(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown config key '{key}'{hint}")
        elif not key:  # a rule across sections: its message names the keys
            problems.append(str(item["msg"]).removeprefix("Value error, "))
        else:
            problems.append(f"config key '{key}': {item['msg']} (got {item.get('input')!r})")
    return "; ".join(problems)


def build_config(data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Paper defaults <- preset or file <- ``--set`` overrides, validated."""
    return build_config(apply_overrides(raw_config(name_or_path), overrides or []))
