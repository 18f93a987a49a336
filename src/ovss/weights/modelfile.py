"""The self-describing ovss weights file: one safetensors file = architecture + weights.

File layout (safetensors): an 8-byte little-endian header length N, N bytes of JSON header (tensor
names, dtypes, shapes, byte ranges, and a ``__metadata__`` table of strings), then the tensor data.
ovss writes these metadata keys:

- ``ovss_format``: ``"3"``;
- ``family``: ``san`` | ``catseg`` | ``sed``; ``config``: the model config as JSON;
- ``content_sha256``: sha256 of the whole file (header with every metadata entry, tensor names,
  shapes and byte ranges, then the data) as written with this entry's value set to a fixed
  placeholder: editing the config (a pixel mean, say), the family, a tensor's name or its data
  is detected;
- ``name``, ``source_format``, ``source_sha256`` where the file was converted from a release.

Files of earlier formats (``"1"``: no digest; ``"2"``: ``data_sha256``, a digest of the tensor data
only, which missed edits of the config) are refused for loading with one line saying how to convert
them again; ``ovss convert NAME OLD_FILE`` accepts them as a source (its data digest is checked and
the architecture comes from the registry entry NAME, not from the old file).

Everything is checked before a byte of tensor data is allocated: the header structure against the
file size (truncated or padded files), the metadata (family, config), and (by the build stage,
:func:`ovss.weights.build.check_fits`, from ``meta_tensors``) the config's parameter shapes against
the file's, on the meta device with a budget that stops a crafted config asking for a huge model.
The digest is verified once per file and process (``verify``), or, for the converted-weights cache,
once per change of the file (a stamp of size, mtime, ctime and inode). This module builds no model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ovss.errors import CheckpointMismatchError, OvssError, WeightsFileError, WeightsNotFoundError
from ovss.utils import atomic_write, check_regular_file

if TYPE_CHECKING:
    from ovss.models.base import ModelConfig

FORMAT_VERSION = "3"
LEGACY_VERSIONS = ("1", "2")  # digest over the tensor data only (2) or none (1): re-convert
KNOWN_VERSIONS = (*LEGACY_VERSIONS, FORMAT_VERSION)
DIGEST_KEY = "content_sha256"  # format 3: the whole file, this value written as the placeholder
DEFAULT_FIX = "re-download or re-convert it"
MAX_HEADER = 100 << 20  # bytes; the safetensors library refuses larger headers too
MAX_RESIZE_SIDE = 16384  # test_resize sizes a config may ask for
_CHUNK = 8 << 20
_PLACEHOLDER = "pending" + "0" * 57  # 64 characters, replaced by the data digest after writing

_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

_VERIFIED: dict[tuple[Any, ...], str] = {}  # stat key -> file sha256, files verified in this process


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header: dtype name, shape, byte range in the data region."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclasses.dataclass
class ModelFile:
    """A safetensors file whose header has been read and checked (no tensor data read yet).

    Attributes:
        path: the file.
        fix: what to tell the user when the file turns out bad (e.g. "delete it and run ...").
        header_size: bytes before the data region (8 + header length).
        metadata: the ``__metadata__`` table.
        tensors: name -> :class:`TensorInfo`, in header order.
        stat_key: (size, mtime_ns, ctime_ns, inode, device) when the header was read.
    """

    path: Path
    fix: str
    header_size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    stat_key: tuple[int, ...]

    @property
    def is_ovss(self) -> bool:
        return "ovss_format" in self.metadata

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def error(self, problem: str) -> WeightsFileError:
        return WeightsFileError(f"{self.path} {problem}; {self.fix}")

    # ------------------------------------------------------------------------------ metadata
    def model_config(self, legacy_ok: bool = False) -> tuple[ModelConfig, str]:
        """(config, family) from the ovss metadata, validated.

        Args:
            legacy_ok: accept files of the earlier formats (``ovss convert``, which takes the
                architecture from the registry, not from the file); else they are refused.

        Raises:
            WeightsFileError: no ovss metadata, unknown or earlier version, no or unknown family, bad config.
        """
        from ovss.models.build import family_classes
        from ovss.models.family import family_names

        meta = self.metadata
        if not self.is_ovss:
            how = (
                self.fix if self.fix != DEFAULT_FIX  # the converted-weights cache: its own file lost them
                else f"pass it with --model NAME --weights {self.path}"
            )
            raise CheckpointMismatchError(f"{self.path} is a safetensors file without ovss metadata; {how}")
        if meta["ovss_format"] not in KNOWN_VERSIONS:
            raise self.error(
                f"has ovss_format {meta['ovss_format']!r}, which this ovss does not know (known: "
                f"{', '.join(KNOWN_VERSIONS)}); upgrade ovss or convert the weights again"
            )
        if meta["ovss_format"] in LEGACY_VERSIONS and not legacy_ok:
            raise WeightsFileError(
                f"{self.path} was written by an earlier ovss (ovss_format {meta['ovss_format']}), whose "
                f"integrity check does not cover the model config; {self._reconvert()}"
            )
        family = meta.get("family")
        if family not in family_names():
            what = "no 'family' entry" if family is None else f"unknown family {family!r}"
            raise self.error(f"has {what} in its metadata (expected one of {', '.join(family_names())})")
        if "config" not in meta:
            raise self.error("has no 'config' entry in its metadata")
        try:
            config = family_classes(family)[0].from_json(meta["config"])
        except (OvssError, ValueError, TypeError, KeyError) as e:
            raise self.error(f"has an invalid model config in its metadata ({_one_line(e)})") from None
        resize = config.test_resize
        if max(resize.size, resize.max_size) > MAX_RESIZE_SIDE:
            raise self.error(
                f"asks for test-time resize size {resize.size}/{resize.max_size}, above {MAX_RESIZE_SIDE}"
            )
        return config, family

    def _reconvert(self) -> str:
        if self.fix != DEFAULT_FIX:  # the converted-weights cache: "delete it and run 'ovss download ...'"
            return self.fix
        name = self.metadata.get("name", "NAME")
        return f"convert it again: ovss convert {name} {self.path} --out NEW.safetensors"

    # ------------------------------------------------------------------------------ shapes
    def meta_tensors(self) -> dict[str, torch.Tensor]:
        """Meta-device stand-ins (right shape and dtype, no storage) of every tensor in the file."""
        from safetensors.torch import _TYPES  # dtype name -> torch dtype

        return {
            k: torch.empty(t.shape, dtype=_TYPES.get(t.dtype, torch.uint8), device="meta")
            for k, t in self.tensors.items()
        }

    # ------------------------------------------------------------------------------ integrity
    def verify(self, stamp: Path | None = None) -> str | None:
        """Check the recorded digest (``content_sha256``; ``data_sha256`` of a format 2 file) against
        the bytes on disk.

        Args:
            stamp: a file recording the last successful check (converted-weights cache): while the
                file's size, mtime, ctime and inode and its recorded digest are unchanged, the check is
                skipped.

        Returns:
            the sha256 of the whole file when it was read here (None when the stamp made it unnecessary).

        Raises:
            WeightsFileError: the file does not have the recorded digest (or records none), or it changed
                since the header was read.
        """
        legacy = not self.is_ovss or self.metadata.get("ovss_format") in LEGACY_VERSIONS
        recorded = self.metadata.get("data_sha256" if legacy else DIGEST_KEY)  # none: a foreign file
        if not legacy and (not isinstance(recorded, str) or len(recorded) != 64):
            raise self.error(f"records no valid {DIGEST_KEY} in its metadata: it is corrupt or was edited")
        if stamp is not None:
            previous = _read_stamp(stamp)
            if previous.get("stat") == list(self.stat_key) and previous.get(DIGEST_KEY) == recorded:
                return None
        key = (str(self.path.resolve()), *self.stat_key)
        if key in _VERIFIED and stamp is None:
            return _VERIFIED[key]
        whole, data, content = self._hash(None if legacy else recorded)
        found = data if legacy else content
        if recorded is not None and found != recorded:
            what = "its data" if legacy else "its content (config, names and data)"
            raise self.error(
                f"is corrupt or was edited: {what} has sha256 {found[:12]}..., recorded {recorded[:12]}... "
                "when it was written"
            )
        _VERIFIED[key] = whole
        if stamp is not None and not legacy:
            _write_stamp(stamp, self.stat_key, content)
        return whole

    def _hash(self, recorded: str | None) -> tuple[str, str, str]:
        """(sha256 of the whole file, of the data region, of the file with ``recorded`` replaced by the
        placeholder), one pass."""
        whole, data, content = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
        with open(self.path, "rb") as f:
            head = f.read(self.header_size)
            whole.update(head)
            if recorded is not None:
                if head.count(recorded.encode()) != 1:
                    raise self.error(f"records its {DIGEST_KEY} more than once: it is corrupt or was edited")
                content.update(head.replace(recorded.encode(), _PLACEHOLDER.encode()))
            while block := f.read(_CHUNK):
                whole.update(block)
                data.update(block)
                content.update(block)
        if len(head) != self.header_size or _stat_key(self.path) != self.stat_key:
            raise self.error("changed while it was being read")
        return whole.hexdigest(), data.hexdigest(), content.hexdigest()

    # ------------------------------------------------------------------------------ data
    def load_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the file, on the CPU, in its stored dtype."""
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path), device="cpu")
        except Exception as e:  # safetensors raises its own error type for bad files
            raise self.error(f"cannot be read ({_one_line(e)})") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _stat_key(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def check_file(path: Path, what: str = "checkpoint file") -> Path:
    """Refuse a missing path, a folder or a special file (a FIFO would block ``open`` forever).

    Raises:
        WeightsNotFoundError: the path does not exist.
        WeightsFileError: it is a folder or not a regular file.
    """
    return check_regular_file(path, what, WeightsNotFoundError, WeightsFileError)


def looks_like_safetensors(path: Path) -> bool:
    """True for a ``.safetensors`` name, or a file whose first bytes look like a safetensors header."""
    if Path(path).suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < MAX_HEADER


def open_model_file(path: str | Path, fix: str = DEFAULT_FIX) -> ModelFile:
    """Read and check the header of a safetensors file (structure only; see :class:`ModelFile`).

    Args:
        path: the file.
        fix: the fix quoted in every error about this file.

    Raises:
        WeightsNotFoundError / WeightsFileError: missing, not a file, empty, truncated, padded,
            unparsable header, bad dtypes, shapes or byte ranges (one line each, with ``fix``).
    """
    path = check_file(Path(path))
    key = _stat_key(path)
    size = key[0]

    def bad(problem: str) -> WeightsFileError:
        return WeightsFileError(f"{path} is not a valid safetensors file ({problem}); {fix}")

    if size == 0:
        raise bad("it is empty")
    with open(path, "rb") as f:
        first = f.read(8)
        if len(first) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(first, "little")
        if n > min(MAX_HEADER, size - 8):
            raise bad(f"header length {n} does not fit the {size}-byte file: truncated or not safetensors")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"unreadable header: {_one_line(e)}") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ is not a table of strings")
    tensors = {name: _tensor_info(name, entry, bad) for name, entry in header.items()}
    covered = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if t.start != covered:
            raise bad(f"tensor {name} starts at byte {t.start}, expected {covered} (overlap or gap)")
        covered = t.end
    if covered != size - 8 - n:
        raise bad(f"the tensors cover {covered} data bytes, the file has {size - 8 - n}: truncated or padded")
    return ModelFile(path, fix, 8 + n, dict(metadata), tensors, key)


def _tensor_info(name: str, entry: object, bad: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise bad(f"entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _ITEMSIZE:
        raise bad(f"tensor {name} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise bad(f"tensor {name} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"tensor {name} has invalid data_offsets {offsets!r}")
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    if info.numel * _ITEMSIZE[dtype] != info.end - info.start:
        raise bad(f"tensor {name} {tuple(shape)} {dtype} does not match its {info.end - info.start} bytes")
    return info


# ----------------------------------------------------------------------------------------- writing
def save_model_file(
    path: Path, state_dict: Mapping[str, torch.Tensor], config: ModelConfig, family: str, **meta: str
) -> Path:
    """Atomically write weights + architecture (+ the data digest) into one safetensors file."""
    from safetensors.torch import save_file

    metadata = {
        "ovss_format": FORMAT_VERSION,
        "family": family,
        "config": config.to_json(),
        **meta,
        DIGEST_KEY: _PLACEHOLDER,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)
        _record_digest(tmp)

    return atomic_write(Path(path), write)


def _record_digest(path: Path) -> str:
    """Replace the digest placeholder in the header by the sha256 of the whole file as it is (the
    placeholder included; same length, in place)."""
    with open(path, "r+b") as f:
        first = f.read(8)
        header = f.read(int.from_bytes(first, "little"))
        marker = _PLACEHOLDER.encode()
        if header.count(marker) != 1:
            raise OvssError(f"internal error: digest placeholder not found once in {path}")
        content = hashlib.sha256(first + header)
        while block := f.read(_CHUNK):
            content.update(block)
        digest = content.hexdigest()
        f.seek(8)
        f.write(header.replace(marker, digest.encode()))
    return digest


def stamp_path(path: Path) -> Path:
    """Where the integrity stamp of a converted-weights cache file lives."""
    return path.parent / f".{path.name}.stamp"


def _read_stamp(stamp: Path) -> dict[str, Any]:
    try:
        data = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_stamp(stamp: Path, key: tuple[int, ...], digest: str) -> None:
    text = json.dumps({"stat": list(key), DIGEST_KEY: digest})
    with contextlib.suppress(OSError):  # a read-only cache: the check simply runs again next time
        atomic_write(stamp, lambda p: p.write_text(text))


def write_stamp(path: Path) -> None:
    """Record that the cache file ``path`` (just written and verified) is intact as it is now."""
    mf = open_model_file(path)
    digest = mf.metadata.get(DIGEST_KEY)
    if digest:
        _write_stamp(stamp_path(path), mf.stat_key, digest)
