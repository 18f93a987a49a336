"""Build the model a training run starts from.

Three starting points (``TrainConfig.model``):

* ``weights``: a registry name (``san-vit-b16``: official weights, downloaded and converted once) or a
  checkpoint file (ovss ``.safetensors`` or an official file) -- fine-tuning. The architecture comes
  from the weights; ``overrides`` may change fields that keep the parameter shapes.
* ``clip_weights``: the architecture of registry entry ``name`` (plus ``overrides``), randomly
  initialised, with the pretrained CLIP towers loaded from an OpenAI / open_clip / Hugging Face
  checkpoint (local file, or ``hf://OWNER/REPO/FILE`` downloaded from the Hugging Face hub). This is
  how the official runs start.
* ``random_init``: everything random (tests and smoke runs).
"""

from __future__ import annotations

from pathlib import Path

from ovss.engine.config import ModelSection
from ovss.errors import ConfigError, WeightsNotFoundError
from ovss.models.base import SegmentationModel


def resolve_file(source: str) -> Path:
    """A local path, or ``hf://OWNER/REPO/PATH/IN/REPO`` fetched into the ovss hub cache."""
    if not source.startswith("hf://"):
        return Path(source).expanduser()
    parts = source[len("hf://") :].split("/")
    if len(parts) < 3:
        raise ConfigError(f"{source!r} is not hf://OWNER/REPO/FILE; e.g. hf://laion/REPO/open_clip_model.safetensors")
    from huggingface_hub import hf_hub_download

    from ovss import __version__
    from ovss.home import is_offline, ovss_home

    try:
        return Path(
            hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), cache_dir=str(ovss_home() / "hub"),
                            local_files_only=is_offline(), library_name="ovss", library_version=__version__)
        )
    except Exception as e:  # huggingface_hub raises many unrelated types for network / missing files
        raise WeightsNotFoundError(
            f"cannot fetch {source} ({type(e).__name__}); download the file yourself and pass its path"
        ) from None


def load_clip_weights(model: SegmentationModel, source: str) -> None:
    """Load a pretrained CLIP checkpoint into ``model.clip`` (strict: every key, every shape)."""
    from ovss.towers.clip import CLIP
    from ovss.weights.build import load_strict
    from ovss.weights.formats import convert_clip
    from ovss.weights.read import read_state_dict

    clip = model.clip
    assert isinstance(clip, CLIP), type(clip)  # the families build their towers as CLIP(config.clip)
    vision = clip.config.vision
    split = vision.split_qkv if vision is not None else None
    state = convert_clip(read_state_dict(resolve_file(source)), split_qkv=split)
    load_strict(clip, state, source, model="CLIP")


def build_training_model(section: ModelSection) -> tuple[SegmentationModel, str]:
    """The model to train and its family, in training mode on the CPU (float32).

    Raises:
        ConfigError: no initialisation was chosen, or the weights belong to another family.
    """
    from ovss.models.build import build_model
    from ovss.weights.registry import get_weight_spec

    spec = get_weight_spec(section.name)
    if section.weights is not None:
        from ovss.weights.build import load_strict
        from ovss.weights.cache import load_model

        model, info = load_model(section.weights)
        if info["family"] != spec.family:
            raise ConfigError(
                f"model.weights={section.weights!r} holds a {info['family']} model but model.name="
                f"{section.name!r} is {spec.family}; use a {info['family']} recipe"
            )
        if section.overrides:
            state = model.state_dict()
            model = build_model(model.config.override(*section.overrides))
            load_strict(model, state, section.weights)
        return model.train(), spec.family
    if section.clip_weights is None and not section.random_init:
        raise ConfigError(
            f"{section.name} would start from random CLIP weights: pass --set model.clip_weights=FILE (the "
            "pretrained CLIP the official run loads, see docs/training.md), --weights NAME_OR_FILE to "
            "fine-tune, or --set model.random_init=true"
        )
    config = spec.config()
    if section.overrides:
        config = config.override(*section.overrides)
    model = build_model(config)
    if section.clip_weights is not None:
        load_clip_weights(model, section.clip_weights)
    return model.train(), spec.family
