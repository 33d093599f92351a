"""A PNG comparing input and output in the axial, coronal and sagittal planes.

Both volumes are resampled onto one axis-aligned LPS grid covering the output, so the three
planes are true patient planes whatever the acquisition orientation (an oblique or sagittal
series included). The input is resampled with nearest neighbour on purpose: the preview should
show the thick slices as they were acquired next to what the engine made of them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def _reference_grid(image: sitk.Image, step: float) -> sitk.Image:
    size = np.asarray(image.GetSize(), dtype=float)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    corners = np.array(
        [[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    )
    points = np.asarray(image.GetOrigin()) + (corners * spacing) @ direction.T
    low, high = points.min(axis=0), points.max(axis=0)
    extent = np.maximum(np.ceil((high - low) / step).astype(int) + 1, 1)
    reference = sitk.Image([int(v) for v in extent], sitk.sitkFloat32)
    reference.SetSpacing([step] * 3)
    reference.SetOrigin([float(v) for v in low])
    return reference


def write_preview(
    source: sitk.Image, enhanced: sitk.Image, path: Path | str, title: str = ""
) -> Path:
    """Write the comparison PNG (top row input, bottom row output) and return its path."""
    step = max(1.0, min(enhanced.GetSpacing()))
    reference = _reference_grid(enhanced, step)
    rows = [
        ("input", sitk.Resample(source, reference, sitk.Transform(), sitk.sitkNearestNeighbor)),
        ("output", sitk.Resample(enhanced, reference, sitk.Transform(), sitk.sitkLinear)),
    ]
    arrays = [(label, sitk.GetArrayFromImage(img)) for label, img in rows]  # (z, y, x) in LPS
    vmax = float(np.percentile(arrays[1][1], 99.5)) or 1.0
    figure, axes = plt.subplots(2, 3, figsize=(12, 8.4), facecolor="black")
    for row, (label, array) in enumerate(arrays):
        z, y, x = (s // 2 for s in array.shape)
        planes = {
            # Radiological display: patient right on the left (L is +x), anterior up, head up.
            "axial": array[z],
            "coronal": np.flipud(array[:, y, :]),
            "sagittal": np.flipud(array[:, :, x]),
        }
        for column, (plane, data) in enumerate(planes.items()):
            axis = axes[row, column]
            axis.imshow(data, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            axis.set_title(f"{label} {plane}", color="white")
            axis.axis("off")
    if title:
        figure.suptitle(title, color="white")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80, facecolor="black")
    plt.close(figure)
    return path
