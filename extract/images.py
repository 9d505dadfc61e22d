"""Image files for stage one and three: which suffixes are images, decoding to RGB, the pre-flight check."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from iagcn.extract.split import DatasetSplit

#: file suffixes taken as images when a folder is listed or an image id is looked up (any Pillow decodes)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def load_image_rgb(path: str | os.PathLike):
    """Open an image as an 8-bit RGB ``PIL.Image`` with its EXIF orientation applied.

    Accepts anything Pillow decodes, whatever the extension says (PNG saved as .jpg), in any mode
    (grayscale, CMYK, palette, RGBA, 16-bit). Raises ``OSError``/``PIL.UnidentifiedImageError`` on
    truncated or non-image files.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()  # full decode: truncated files raise here
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)                                    # (H, W)
            hi = float(arr.max()) or 1.0
            im = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), mode="L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        return im.convert("RGB")


def check_image(path: Path, *, decode: bool = True) -> str | None:
    """None if ``path`` is a usable image, else what is wrong with it (one phrase)."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing file"
    except OSError as e:
        return f"cannot read ({e.strerror})"
    if not path.is_file():
        return "not a regular file"
    if size == 0:
        return "zero-byte file"
    try:
        if decode:
            load_image_rgb(path)
        else:
            with Image.open(path) as im:
                im.size  # header only
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except (OSError, SyntaxError, ValueError) as e:
        return f"undecodable or truncated image ({e})"
    except Image.DecompressionBombError as e:
        return f"image too large ({e})"
    return None


def find_bad_images(ds: DatasetSplit, *, check_decode: bool = True, workers: int | None = None,
                    progress: bool = False) -> dict[str, str]:
    """{image id: problem} for every image of ``ds`` that is missing, empty, truncated or not an image."""
    workers = workers or min(8, os.cpu_count() or 1)
    check = lambda p: check_image(p, decode=check_decode)  # noqa: E731
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding
        results = pool.map(check, ds.image_paths, chunksize=16) if workers > 1 else map(check, ds.image_paths)
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(ds), desc="pre-flight", unit="img", leave=False)
        return {image_id: f"{path}: {problem}"
                for image_id, path, problem in zip(ds.image_ids, ds.image_paths, results) if problem is not None}
