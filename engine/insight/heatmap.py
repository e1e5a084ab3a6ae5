"""Drawing a class activation map over its image: the heat at the image's size, its colours, the blend.

The map covers only the center crop the network saw, so outside it there is no heat (and no colour).
Colour and transparency follow the heat: cold places stay clear, so the picture shows through where
the model did not look. The CLI writes ``blend_heat``'s picture; the GUI paints ``heat_colors`` over
its own pixmap (gui.heatmap_overlay), so both show the same colours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:  # (type only: the explanation module brings scikit-learn, which the GUI loads later)
    from engine.insight.explain import Explanation

DEFAULT_OPACITY = 0.6
# Dark blue -> cyan -> green -> yellow -> red, a rainbow ramp people read as cold -> hot.
_ANCHORS = np.array([
    (0.00, 40, 30, 140), (0.25, 30, 140, 230), (0.50, 60, 210, 120), (0.75, 250, 220, 40), (1.00, 230, 40, 30),
], dtype=np.float64)
_LUT = np.stack([np.interp(np.linspace(0.0, 1.0, 256), _ANCHORS[:, 0], _ANCHORS[:, c]) for c in (1, 2, 3)],
                axis=1).round().astype(np.uint8)


def heat_over_image(explanation: Explanation, width: int, height: int) -> np.ndarray:
    """The map's relative heat (0..1, float32) for the image shown at ``width`` x ``height`` pixels:
    upsampled bilinearly over the crop the network saw, zero outside it."""
    sx, sy = width / explanation.image_size[0], height / explanation.image_size[1]
    left, top, right, bottom = explanation.crop
    x0, y0 = int(round(left * sx)), int(round(top * sy))
    x1, y1 = min(width, max(x0 + 1, int(round(right * sx)))), min(height, max(y0 + 1, int(round(bottom * sy))))
    cells = Image.fromarray(explanation.relative_heat().astype(np.float32), "F")
    heat = np.zeros((height, width), dtype=np.float32)
    heat[y0:y1, x0:x1] = np.asarray(cells.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
    return np.clip(heat, 0.0, 1.0)


def heat_colors(heat: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """(H, W) heat in 0..1 -> (H, W, 4) uint8 RGBA: colour from the ramp, clear below a fifth of the
    maximum (faint evidence would only tint the picture), full ``opacity`` from 0.6 up."""
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    rgba = np.empty((*heat.shape, 4), dtype=np.uint8)
    rgba[..., :3] = _LUT[np.rint(heat * 255).astype(np.intp)]
    rgba[..., 3] = np.rint(np.clip((heat - 0.2) / 0.4, 0.0, 1.0) * opacity * 255).astype(np.uint8)
    return rgba


def peak_pixel(explanation: Explanation, width: int, height: int) -> tuple[float, float]:
    """The hottest point in pixels of the image shown at ``width`` x ``height``."""
    x, y = explanation.peak
    return x * width, y * height


def blend_heat(image: Image.Image, explanation: Explanation, opacity: float = DEFAULT_OPACITY) -> Image.Image:
    """``image`` (any size) with the heat map over it and a ring around the hottest point (RGB)."""
    base = image.convert("RGBA")
    layer = Image.fromarray(heat_colors(heat_over_image(explanation, *base.size), opacity), "RGBA")
    blended = Image.alpha_composite(base, layer).convert("RGB")
    x, y = peak_pixel(explanation, *base.size)
    radius = max(4.0, 0.03 * min(base.size))
    draw = ImageDraw.Draw(blended)
    width = max(1, int(radius / 4))
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(255, 255, 255), width=width)
    return blended
