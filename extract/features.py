"""Stage one's maths: global max pooling and RoIAlign region features on the backbone's last feature map.

    fmap = backbone.forward_features(squash_resize(image))      (B, D, h, w)  last feature map
    x    = max over (h, w) of fmap                              (B, D)        global max pooling
    X    = max over the k x k grid of RoIAlign(fmap, boxes)     (B, N, D)     boxes mapped into fmap coordinates
"""
from __future__ import annotations


def global_max_pool(fmap):
    """Global feature x: (B, D, h, w) -> (B, D)."""
    return fmap.amax(dim=(2, 3))  # (B, D)


def boxes_to_map(boxes, *, image_sizes, map_size: tuple[int, int]):
    """Original-pixel boxes (B, N, 4) -> feature-map coordinates (B, N, 4).

    The backbone sees every image squash-resized to its input, whose last map is (h, w): a point (x, y) of an
    H x W image lands at (x * w / W, y * h / H) on the map. Scales come from the actual map, so nothing is
    tied to one input size. image_sizes (B, 2) original (H, W).
    """
    import torch

    h, w = map_size
    hw = image_sizes.to(boxes.dtype)  # (B, 2)
    scale = torch.stack([w / hw[:, 1], h / hw[:, 0], w / hw[:, 1], h / hw[:, 0]], dim=1)  # (B, 4)
    return boxes * scale[:, None, :]  # (B, N, 4)


def region_features(fmap, map_boxes, *, output_size: int, sampling_ratio: int):
    """ROI features X: RoIAlign each box on the last map, then max over its k x k grid.

    fmap (B, D, h, w), map_boxes (B, N, 4) in map coordinates -> (B, N, D).
    """
    from torchvision.ops import roi_align

    B, D = fmap.shape[:2]
    N = map_boxes.shape[1]
    pooled = roi_align(fmap, list(map_boxes.unbind(0)), output_size=output_size, spatial_scale=1.0,
                       sampling_ratio=sampling_ratio, aligned=True)  # (B*N, D, k, k)
    return pooled.amax(dim=(2, 3)).view(B, N, D)  # (B, N, D)
