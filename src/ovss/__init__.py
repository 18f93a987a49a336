"""ovss: open-vocabulary semantic segmentation (SAN, CAT-Seg, SED) in pure PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"
