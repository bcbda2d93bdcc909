"""Building blocks of vrseg's self-contained HTML pages (``pipelines.report``, ``pipelines.label_report``).

Images are embedded as ``data:`` URIs (base64 PNG), so a page needs nothing beside it; figures are drawn with
matplotlib's object API (no pyplot global state), imported on first use only. Masks are shown tinted over a
frame (mid grey without one), small frames enlarged so one-pixel errors stay visible.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OVERLAY_ALPHA = 0.55
MIN_PANEL_HEIGHT = 160
BACKGROUND_GREY = 110
BASE_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td.headline { font-weight: bold; font-size: 1.2em; }
figure { display: inline-block; margin: 0.3em; }
figcaption { font-size: 0.85em; text-align: center; }
.legend span { padding: 0 0.5em; margin-right: 1em; }
"""


def png_base64(image: np.ndarray) -> str:
    """``image`` (H, W, 3) uint8 as base64 PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure; matplotlib is imported here, on first use, so that the scoring workers,
    which import ``pipelines.evaluate`` (and so the report modules) but draw nothing, do not pay for it."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def figure_base64(figure: Figure) -> str:
    """``figure`` as base64 PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def img_tag(alt: str, png_b64: str) -> str:
    """An ``<img>`` showing base64 PNG ``png_b64`` from a ``data:`` URI."""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png_b64}'>"


def background(image: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 to paint masks on: ``image`` (resized to H x W if needed, grey turned RGB), or mid grey."""
    if image is None:
        return np.full((height, width, 3), BACKGROUND_GREY, dtype=np.uint8)
    base = np.asarray(image, dtype=np.uint8)
    if base.ndim == 2:
        base = np.repeat(base[:, :, None], 3, axis=2)
    if base.shape[:2] != (height, width):
        base = np.asarray(Image.fromarray(base).convert("RGB").resize((width, height), Image.BILINEAR))
    return base


def tint(base: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """``base`` (H, W, 3) with the pixels of ``mask`` (H, W) bool blended towards ``rgb``."""
    out = base.astype(np.float32)
    out[mask] = (1.0 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * rgb
    return out.astype(np.uint8)


def enlarge(panel: np.ndarray) -> np.ndarray:
    """``panel`` enlarged by an integer factor (nearest neighbour) to at least ``MIN_PANEL_HEIGHT`` rows."""
    height = panel.shape[0]
    scale = math.ceil(MIN_PANEL_HEIGHT / height) if height < MIN_PANEL_HEIGHT else 1
    return panel.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else panel
