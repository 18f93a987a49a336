"""Training configuration: one typed tree, saved with every checkpoint.

``TrainConfig`` round-trips through JSON (``to_json`` / ``from_json``) and takes the CLI's
``--set a.b=value`` overrides through :meth:`ovss.config.Config.override`. Named recipes reproducing
the official runs live in :mod:`ovss.engine.recipes`; a recipe printed with
``ovss train --config NAME --print-config`` is a valid ``--config FILE``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ovss.config import Config
from ovss.data.augment import AugmentConfig
from ovss.errors import ConfigError


@dataclasses.dataclass(kw_only=True)
class ModelSection(Config):
    """What is trained and how it is initialised."""

    name: str = "san-vit-b16"  # registry name whose architecture is trained (`ovss models` lists them)
    overrides: tuple[str, ...] = ()  # "a.b=value" changes to that architecture config
    weights: str | None = None  # initial weights of the whole model: registry name or checkpoint file
    clip_weights: str | None = None  # pretrained CLIP file (OpenAI / open_clip / HF) or hf://REPO/FILE
    random_init: bool = False  # allow training from random CLIP weights (tests); else one of the above


@dataclasses.dataclass(kw_only=True)
class DataSection(Config):
    """A folder of images with label maps (a prepared benchmark or a custom dataset)."""

    root: str = ""  # data root: `ovss prepare --out` folder, or the custom dataset folder
    benchmark: str | None = "coco171"  # catalog name; null = custom layout root/image_dir, root/label_dir
    split: str = "train"  # benchmark split
    image_dir: str = "images"  # custom layout: image folder relative to root
    label_dir: str = "labels"  # custom layout: label maps (same file stem, PNG/TIFF) relative to root
    classes: str | None = None  # class names: file, JSON list or "a; b"; null = the benchmark's list
    class_variant: str = "san"  # benchmark class-name variant: "san", "catseg" or "plain"
    ignore_index: int = 255  # label value without a class (padding uses it too)
    max_images: int = 0  # use only the first N pairs in file order (0 = all)

    def __post_init__(self) -> None:
        if self.max_images < 0:
            raise ConfigError(f"DataSection.max_images must be >= 0, got {self.max_images}")


@dataclasses.dataclass(kw_only=True)
class SolverConfig(Config):
    """Optimiser, schedule and batch (detectron2 ``SOLVER.*`` names in brackets)."""

    iterations: int = 60000  # optimiser steps [MAX_ITER]
    batch_size: int = 32  # images per step over all ranks and accumulation steps [IMS_PER_BATCH]
    accumulation: int = 1  # micro-batches per step and rank (gradients summed, then one step)
    lr: float = 1e-4  # base learning rate [BASE_LR]
    weight_decay: float = 1e-4  # AdamW decoupled weight decay [WEIGHT_DECAY]
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    schedule: Literal["poly", "cosine", "constant"] = "poly"  # [LR_SCHEDULER_NAME] WarmupPolyLR / Cosine
    poly_power: float = 0.9  # poly exponent [POLY_LR_POWER]
    warmup_iters: int = 0  # [WARMUP_ITERS]
    warmup_factor: float = 1.0  # lr factor at iteration 0 of the warm-up [WARMUP_FACTOR]
    warmup_method: Literal["linear", "constant"] = "linear"  # [WARMUP_METHOD]
    lr_multipliers: dict[str, float] = dataclasses.field(default_factory=dict)  # name prefix -> lr factor
    no_decay_keywords: tuple[str, ...] = ()  # params whose name contains one of these: weight decay 0
    weight_decay_norm: float = 0.0  # weight decay of norm-layer params [WEIGHT_DECAY_NORM]
    weight_decay_embed: float = 0.0  # weight decay of nn.Embedding params [WEIGHT_DECAY_EMBED]
    norm_decay_exempt: tuple[str, ...] = ()  # fnmatch patterns: norm params keeping full decay (see recipes)
    clip_grad_norm: float = 0.01  # full-model L2 gradient-norm clip, 0 = off [CLIP_GRADIENTS]

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "accumulation"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SolverConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_grad_norm < 0:
            raise ConfigError(
                f"SolverConfig needs lr > 0, weight_decay >= 0, clip_grad_norm >= 0; got {self.lr}, "
                f"{self.weight_decay}, {self.clip_grad_norm}"
            )
        if self.warmup_iters < 0 or not 0 < self.warmup_factor <= 1:
            raise ConfigError(
                f"SolverConfig.warmup_iters must be >= 0 and warmup_factor in (0, 1], got "
                f"{self.warmup_iters}, {self.warmup_factor}"
            )
        if any(m < 0 for m in self.lr_multipliers.values()):
            raise ConfigError(f"SolverConfig.lr_multipliers must be >= 0, got {self.lr_multipliers}")


@dataclasses.dataclass(kw_only=True)
class LossConfig(Config):
    """Loss weights. SAN uses the set-loss fields, CAT-Seg and SED ``bce_weights``."""

    class_weight: float = 2.0  # SAN class CE weight (also the matcher's class cost) [CLASS_WEIGHT]
    mask_weight: float = 5.0  # SAN point-sampled BCE weight (and matcher cost) [MASK_WEIGHT]
    dice_weight: float = 5.0  # SAN dice weight (and matcher cost) [DICE_WEIGHT]
    void_weight: float = 0.1  # weight of the void class in the CE [NO_OBJECT_WEIGHT]
    num_points: int = 12544  # points per mask (112 * 112) [TRAIN_NUM_POINTS]
    oversample_ratio: float = 3.0  # importance sampling [OVERSAMPLE_RATIO]
    importance_sample_ratio: float = 0.75  # [IMPORTANCE_SAMPLE_RATIO]
    deep_supervision: bool = True  # SAN: also train the earlier side outputs [DEEP_SUPERVISION]
    bce_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # CAT-Seg: [0]; SED: final, CER heads 1/32..1/8
    semantic_loss: Literal["bce", "ce"] = "bce"  # CAT-Seg v1: "ce" = mmseg softmax CE, avg_non_ignore

    def __post_init__(self) -> None:
        if self.num_points < 1 or self.oversample_ratio < 1 or not 0 <= self.importance_sample_ratio <= 1:
            raise ConfigError(
                "LossConfig needs num_points >= 1, oversample_ratio >= 1 and importance_sample_ratio in "
                f"[0, 1]; got {self.num_points}, {self.oversample_ratio}, {self.importance_sample_ratio}"
            )


@dataclasses.dataclass(kw_only=True)
class EvalSection(Config):
    """Periodic evaluation (mIoU of the argmax prediction) during training."""

    period: int = 5000  # evaluate every N iterations and after the last one (0 = never) [EVAL_PERIOD]
    data: DataSection = dataclasses.field(
        default_factory=lambda: DataSection(benchmark="coco171", split="val")
    )  # what to evaluate on; an empty root (custom layout: classes) means the training data's
    max_images: int = 0  # evaluate on the first N images only (0 = all)
    convention: Literal["detectron2", "mmseg"] = "detectron2"  # mIoU averaging convention
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # Segmenter.predict options


@dataclasses.dataclass(kw_only=True)
class TrainConfig(Config):
    """A complete training run."""

    name: str = ""  # recipe name (informational)
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 adds a GradScaler
    tf32: bool = False  # allow TF32 matmuls on Ampere+ GPUs (torch "high" matmul precision)
    seed: int = 0  # base seed: data order, augmentation, and torch (offset by the rank)
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK when available), "cuda" or "cpu"
    workers: int = 4  # DataLoader worker processes per rank (0 = load in the main process)
    checkpoint_period: int = 5000  # save a resumable checkpoint every N iterations and at the end
    keep_checkpoints: int = 2  # keep the newest N checkpoints (0 = keep all)
    log_period: int = 20  # log (rank-averaged) losses every N iterations
    tensorboard: bool | None = None  # None: log to TensorBoard when installed; True: require it
    wandb_project: str | None = None  # log to this Weights & Biases project (needs `pip install wandb`)
    find_unused_parameters: bool = False  # DDP option, for models with parameters unused in forward

    def __post_init__(self) -> None:
        for name in ("checkpoint_period", "log_period"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_checkpoints < 0 or self.workers < 0 or self.eval.period < 0:
            raise ConfigError("TrainConfig.keep_checkpoints, workers and eval.period must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"TrainConfig.device must be 'auto', 'cuda' or 'cpu', got {self.device!r}")

    def micro_batch(self, world_size: int) -> int:
        """Images per forward pass on one rank; raises ConfigError when the batch does not divide."""
        parts = world_size * self.solver.accumulation
        if self.solver.batch_size % parts:
            raise ConfigError(
                f"solver.batch_size={self.solver.batch_size} is not divisible by world size {world_size} x "
                f"accumulation {self.solver.accumulation}; change one of them"
            )
        return self.solver.batch_size // parts
