"""Reading the official parity fixtures and manifests (``$OVSS_PARITY_DIR``, see its README.md).

A fixture folder holds ``config.json`` (hyper-parameters and the recorded tensor names),
``state_dict.safetensors`` (official key layout, tiny random weights), ``input.npy`` / ``input.png``
/ ``tokens.npy`` (the official inputs) and ``outputs.safetensors`` (plus ``outputs_large.safetensors``
for the bigger tensors). A manifest ``manifest_<model>.json`` lists the keys and shapes of a released
full-size checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ovss.towers.clip import ClipConfig
from ovss.towers.convnext import ConvNeXtConfig
from ovss.towers.text import TextConfig
from ovss.towers.vit import VisionConfig
from tests.conftest import needs, parity_dir

TOL = 1e-4  # the parity bar: relative error in float32
OUTPUT_FILES = ("outputs.safetensors", "outputs_large.safetensors")


def read_config(folder: Path) -> dict:
    """The fixture's ``config.json``."""
    return json.loads((folder / "config.json").read_text())


def need(section: dict, key: str, where: str) -> object:
    """``section[key]``, failing with a message naming the missing key and the fixture file."""
    if not isinstance(section, dict) or key not in section:
        have = sorted(section) if isinstance(section, dict) else type(section).__name__
        pytest.fail(f"{where}: missing needed key {key!r} (present: {have})", pytrace=False)
    return section[key]


# CAT-Seg aggregator config fields (CATSegConfig and CATSegV1Config) and the fixture keys that hold
# them: (official detectron2 ``aggregator`` key, mmseg port ``neck`` / ``decode_head`` key).
AGGREGATOR_KEYS = {
    "guidance_proj_dims": ("DECODER_GUIDANCE_PROJ_DIMS", "decoder_guidance_proj_dims"),
    "decoder_dims": ("DECODER_DIMS", "decoder_dims"),
    "hidden_dim": ("HIDDEN_DIMS", "embed_dims"),
    "appearance_proj_dim": ("APPEARANCE_GUIDANCE_PROJ_DIM", "appearance_guidance_proj_dim"),
    "text_proj_dim": ("TEXT_GUIDANCE_PROJ_DIM", "text_guidance_proj_dim"),
    "num_layers": ("NUM_LAYERS", "num_layers"),
    "num_heads": ("NUM_HEADS", "num_heads"),
    "window_size": ("WINDOW_SIZES", "window_size"),
    "attention": ("ATTENTION_TYPE", "attention_type"),
}


def aggregator_fields(section: dict, where: str, mmseg: bool = False) -> dict[str, object]:
    """The aggregator config fields of :data:`AGGREGATOR_KEYS` read from a fixture section (the
    official ``aggregator``, or the mmseg port's ``neck`` and ``decode_head`` merged); lists become
    tuples."""
    fields = {}
    for field, keys in AGGREGATOR_KEYS.items():
        value = need(section, keys[mmseg], where)
        fields[field] = tuple(value) if isinstance(value, list) else value
    return fields


def official_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The fixture's official state dict (``state_dict.safetensors``)."""
    return load_file(str(folder / "state_dict.safetensors"))


def reference_outputs(folder: Path) -> dict[str, torch.Tensor]:
    """Every recorded official tensor: ``outputs.safetensors`` plus ``outputs_large`` when present."""
    refs: dict[str, torch.Tensor] = {}
    for name in OUTPUT_FILES:
        if name == OUTPUT_FILES[0] or (folder / name).is_file():
            refs.update(load_file(str(folder / name)))
    return refs


def read_array(folder: Path, name: str) -> torch.Tensor:
    """A ``.npy`` file of the fixture (``input.npy``, ``tokens.npy``) as a tensor of its dtype."""
    return torch.from_numpy(np.load(folder / name))


def normalized_png(folder: Path, mean, std) -> torch.Tensor:
    """``input.png`` as (1, 3, H, W) float32, ``(rgb - mean) / std`` with 0..255 statistics."""
    rgb = torch.from_numpy(np.asarray(Image.open(folder / "input.png").convert("RGB"), dtype=np.float32))
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (rgb.permute(2, 0, 1)[None] - mean) / std


def recorded_tensors(folder: Path, cfg: dict) -> dict[str, torch.Tensor]:
    """Every tensor the fixture lists in ``config.json["tensors"]`` AND stores (in the outputs files or
    in the ``.npy`` file its entry names, e.g. ``input.npy``); listed-but-absent ones are left out."""
    stored = reference_outputs(folder)
    out: dict[str, torch.Tensor] = {}
    for name, meta in cfg.get("tensors", {}).items():
        file = str(meta.get("file", "")) if isinstance(meta, dict) else ""
        if name in stored:
            out[name] = stored[name]
        elif file.endswith(".npy") and (folder / file).is_file():
            out[name] = read_array(folder, file)
    return out


def align_to_reference(ours: torch.Tensor, ref: torch.Tensor, desc: str = "") -> torch.Tensor:
    """Our tensor for a reference stored for crop / image 0 only (desc says "crop 0 only"): the first
    entries along the batch axis, or along axis 1 for sequence-first (L, B, D) tensors."""
    if "crop 0 only" in desc and ours.ndim == ref.ndim:
        for axis in (0, 1):
            if ours.shape[axis] > ref.shape[axis]:
                return ours.narrow(axis, 0, ref.shape[axis])
    return ours


def decoder_chunk_hook(store: list[torch.Tensor]):
    """Forward hook collecting every call of a CAT-Seg decoder block (the decoder runs on chunks of
    classes); :func:`join_decoder_chunks` turns the list into the official (B*T, C, h, w) tensor."""

    def hook(_module, _args, out: torch.Tensor) -> None:
        store.append(out)

    return hook


def join_decoder_chunks(chunks: list[torch.Tensor], batch: int) -> torch.Tensor:
    """Per-chunk (B*t_i, C, h, w) outputs (image index outer within a chunk) -> (B*T, C, h, w)."""
    return torch.cat([c.reshape(batch, -1, *c.shape[1:]) for c in chunks], dim=1).flatten(0, 1)


def compare_recorded(
    ours: dict[str, torch.Tensor], refs: dict[str, torch.Tensor], cfg: dict, skip: tuple[str, ...] = ()
) -> dict[str, float]:
    """Relative error of every recorded tensor (but ``skip``); fails naming any we cannot produce."""
    from tests.conftest import relative_error

    names = [n for n in refs if n not in skip]
    missing = [n for n in names if n not in ours]
    if missing:
        pytest.fail(f"recorded tensors not mapped to ovss: {missing}", pytrace=False)
    tensors = cfg.get("tensors", {})
    return {
        n: relative_error(
            align_to_reference(ours[n], refs[n], str(tensors.get(n, {}).get("desc", ""))), refs[n]
        )
        for n in names
    }


def read_manifest(name: str) -> dict:
    """``<parity dir>/<name>`` (a full-size checkpoint manifest); skips the test when it is absent."""
    return json.loads(needs(parity_dir() / name).read_text())


def meta_state_dict(manifest: dict) -> dict[str, torch.Tensor]:
    """Shape-only (meta) tensors in the manifest's official key layout and order."""
    return {key: torch.empty(shape, device="meta") for key, shape, _ in manifest["keys"]}


def vit_clip_config(c: dict, split_qkv: bool = False) -> ClipConfig:
    """ClipConfig of an OpenAI-layout ViT CLIP from a fixture's ``config.json["clip"]`` (SAN, CAT-Seg).

    ``split_qkv`` selects the split q/k/v attention layout (CAT-Seg).
    """
    embed = c["embed_dim"]
    return ClipConfig(
        embed_dim=embed,
        vision=VisionConfig(
            image_size=c["native_image_size"],
            patch_size=c["patch_size"],
            width=c["vision_width"],
            layers=c["vision_layers"],
            heads=c["vision_heads"],  # CAT-Seg structural patch: officially width // 64
            mlp_ratio=c.get("vision_mlp_ratio", VisionConfig.mlp_ratio),
            output_dim=embed,
            ln_eps=c.get("ln_eps", VisionConfig.ln_eps),
            split_qkv=split_qkv,
        ),
        text=TextConfig(
            context_length=c["context_length"],
            vocab_size=c["vocab_size"],
            width=c["text_width"],
            heads=c["text_heads"],
            layers=c["text_layers"],
            output_dim=embed,
            ln_eps=c.get("ln_eps", TextConfig.ln_eps),
            split_qkv=split_qkv,
        ),
    )


def convnext_config(clip: dict) -> ConvNeXtConfig:
    """ConvNeXtConfig of the open_clip/timm image tower from a SED fixture's ``config.json["clip"]``."""
    trunk = clip["timm_trunk"]
    oc = clip["open_clip_model_config"]
    vision = oc["vision_cfg"]
    return ConvNeXtConfig(
        depths=tuple(trunk["depths"]),
        dims=tuple(trunk["dims"]),
        kernel_size=trunk["kernel_size"],
        patch_size=trunk["patch_size (stem)"],
        ls_init_value=trunk["ls_init_value"],
        image_size=vision["image_size"],
        output_dim=oc["embed_dim"],
        proj=vision["timm_proj"],
        drop_path=trunk["drop_path_rate"] or 0.0,
        head_drop=vision.get("timm_drop", 0.0),
    )
