"""``ovss.weights.formats.rename_entries``: strict renaming, and its one-line refusal of unmapped keys."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.weights.formats import rename_entries


def _rename(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    return (f"model.{key[4:]}", value) if key.startswith("old.") else None


def test_mapped_keys_are_renamed_in_order_and_skipped_keys_dropped() -> None:
    sd = {"old.b": torch.ones(1), "buf": torch.zeros(1), "old.a": torch.ones(2)}
    out = rename_entries(sd, _rename, "toy", "pass a toy file", skip={"buf"})
    assert list(out) == ["model.b", "model.a"] and out["model.a"].shape == (2,)


def test_unmapped_keys_are_one_line_with_the_first_twenty_and_a_count() -> None:
    sd = {f"stray.{i:02d}": torch.zeros(1) for i in range(23)} | {"old.x": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError) as info:
        rename_entries(sd, _rename, "toy", "pass a toy file")
    message = str(info.value)
    shown = ", ".join(f"stray.{i:02d}" for i in range(20))
    assert message == f"23 key(s) are not part of the toy layout: {shown}, ... (+3 more); pass a toy file"
