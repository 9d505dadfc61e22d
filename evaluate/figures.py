"""The paper's figures for one image, as PNG files: Fig. 1 (the image-dependent LCM A_F next to the statistical
A_S) and Fig. 3 (ROI boxes coloured by their variational weight z).

Like :mod:`iagcn.evaluate.plots` (whose figure and file helpers they use): NumPy arrays in, one PNG written
atomically out, matplotlib's object-oriented API with the Agg canvas. Each also writes the numbers it draws to
``<out>.npz`` (``save_data=True``), so a figure can be checked against the model that produced it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from iagcn.errors import UserError
from iagcn.evaluate.plots import PathLike, new_figure, plain_text, save_npz, save_png, short_class_names


def plot_lcm_pair(A_F, A_S, class_names: Sequence[str], out: PathLike, *, title: str | None = None,
                  save_data: bool = True) -> Path:
    """Fig. 1: the image-dependent LCM A_F (C, C) next to the statistical LCM A_S (C, C) on ONE colour scale.

    The diagonal (a label's correlation with itself) is masked (drawn grey) so that it does not set the scale;
    both panels share the range of the off-diagonal entries of both matrices and one colour bar, so equal colours
    mean equal values. With ``save_data`` the matrices drawn and that range go to ``<out>.npz`` (keys A_F, A_S,
    class_names, colour_range).
    """
    import matplotlib
    from matplotlib import colors

    a_f = np.asarray(A_F, dtype=np.float64)
    a_s = np.asarray(A_S, dtype=np.float64)
    n_classes = len(class_names)
    for name, m in (("A_F", a_f), ("A_S", a_s)):
        if m.shape != (n_classes, n_classes):
            raise UserError(f"plot_lcm_pair: {name} has shape {m.shape}, expected ({n_classes}, {n_classes})")
        if not np.all(np.isfinite(m)):
            raise UserError(f"plot_lcm_pair: {name} has non-finite entries")
    off = ~np.eye(n_classes, dtype=bool)                                     # (C, C) off-diagonal entries
    both = np.concatenate([a_f[off], a_s[off]]) if n_classes > 1 else np.zeros(1)
    lo, hi = float(both.min()), float(both.max())
    norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.75")          # masked diagonal: grey
    names = [plain_text(n) for n in short_class_names(class_names)]   # data, never mathtext
    fig = new_figure(figsize=(11.5, 5.0))
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    for ax, (label, m) in zip(axes, (("image-dependent LCM $A_F$", a_f), ("statistical LCM $A_S$", a_s))):
        im = ax.imshow(np.ma.masked_array(m, mask=~off), cmap=cmap, norm=norm, interpolation="nearest")  # rows i, cols j
        ax.set_title(label)
        if n_classes <= 40:
            ax.set_xticks(range(n_classes))
            ax.set_yticks(range(n_classes))
            ax.set_xticklabels(names, rotation=90, fontsize=7)
            ax.set_yticklabels(names, fontsize=7)
    fig.colorbar(im, ax=axes, fraction=0.03, pad=0.03, label="off-diagonal entries (diagonal masked, grey)")
    if title:
        fig.suptitle(plain_text(title))
    path = save_png(fig, out)
    if save_data:
        save_npz(out, A_F=a_f, A_S=a_s, class_names=np.array(list(class_names)), colour_range=np.array([lo, hi]))
    return path


# ----------------------------------------------------------------------------------------------- Fig. 3
def plot_roi_weights(image, boxes, weights, valid, out: PathLike, *, title: str | None = None,
                     caption: str | None = None, save_data: bool = True, top_k: int | None = None) -> Path:
    """Fig. 3: the image with its valid ROI boxes (x1 y1 x2 y2, image pixels) coloured by the weight z, colour bar.

    Boxes are drawn in increasing z so that the strongest lie on top; padding boxes (valid False) are skipped.
    ``top_k``: only the ``top_k`` valid boxes of largest z (ties: the lower index), the colour scale over them.
    ``caption`` (e.g. the image's labels and the model's predictions) is written under the image and saved in
    the ``.npz``, with ``drawn``, the indices of the boxes drawn.
    """
    import matplotlib
    from matplotlib import cm, colors
    from matplotlib.patches import Rectangle

    if hasattr(image, "convert"):  # PIL image
        img = np.asarray(image.convert("RGB"))
    else:
        img = np.asarray(image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise UserError(f"plot_roi_weights: image of shape {img.shape} is not (H, W) or (H, W, 3)")
    b = np.asarray(boxes, dtype=np.float64)
    z = np.asarray(weights, dtype=np.float64).reshape(-1)
    v = np.asarray(valid, dtype=bool).reshape(-1)
    if b.ndim != 2 or b.shape[1] != 4 or not (len(b) == len(z) == len(v)):
        raise UserError(f"plot_roi_weights: boxes {b.shape}, weights {z.shape}, valid {v.shape} must be "
                        "(N, 4), (N,), (N,)")
    shown = np.flatnonzero(v & np.isfinite(z))
    if top_k is not None:
        if top_k < 1:
            raise UserError(f"plot_roi_weights: top_k {top_k} must be at least 1")
        shown = np.sort(shown[np.argsort(-z[shown], kind="stable")[:top_k]])   # the top_k largest z
    n_valid = int(np.count_nonzero(v & np.isfinite(z)))
    fig = new_figure(figsize=(6.0, 6.0 * img.shape[0] / max(img.shape[1], 1) + 0.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    lo, hi = (float(z[shown].min()), float(z[shown].max())) if shown.size else (0.0, 1.0)
    norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
    cmap = matplotlib.colormaps["plasma"]
    for k in shown[np.argsort(z[shown], kind="stable")]:
        x1, y1, x2, y2 = b[k]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1.0 + 2.0 * norm(z[k]),
                               edgecolor=cmap(norm(z[k]))))
    ax.set_xlim(0, img.shape[1])
    ax.set_ylim(img.shape[0], 0)
    ax.axis("off")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.046, pad=0.04, label="ROI weight z")
    ax.set_title(plain_text(title or (f"{shown.size} ROIs coloured by variational weight z" if shown.size == n_valid
                                      else f"top {shown.size} of {n_valid} ROIs by variational weight z")))
    if caption:
        ax.text(0.0, -0.02, plain_text(caption), transform=ax.transAxes, ha="left", va="top", fontsize=9)
    path = save_png(fig, out)
    if save_data:
        save_npz(out, boxes=b, weights=z, valid=v, caption=np.asarray(caption or ""), drawn=shown)
    return path
