"""A head mask: N4 and the intensity statistics should look at the head, not the air around it.

Otsu separates head from background well on T1 magnitude images; the largest connected component
drops noise specks, and hole filling (slice by slice, since thick slices are not connected
smoothly through-plane) keeps dark structures such as ventricles inside the mask.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_fill_holes, distance_transform_edt


def head_mask(image: sitk.Image) -> sitk.Image:
    """Binary (uint8, 0/1) mask of the head on the image's own grid."""
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), 1.0)
    foreground = sitk.OtsuThreshold(smooth, 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(foreground), sortByObjectSize=True)
    largest = sitk.Equal(components, 1)
    # Slice by slice on the array: 2D sitk slices of an oblique volume have differing origins.
    array = sitk.GetArrayFromImage(largest).astype(bool)
    filled = np.stack([binary_fill_holes(plane) for plane in array]).astype(np.uint8)
    mask = sitk.GetImageFromArray(filled)
    mask.CopyInformation(image)
    return mask


def inner_mask(head: sitk.Image, erosion_mm: float) -> sitk.Image:
    """The head mask shrunk by ``erosion_mm`` in-plane: scalp and skull drop out, the brain stays.

    On T1 the scalp fat is brighter than white matter and the skull darker than grey matter, so a
    bias fit over the whole head mask is pulled by the head's tissue composition rather than by
    the coil (pipeline.bias). The brain lies about 10-20 mm inside the skin. Erosion is in-plane
    only (a 2D distance per slice, in mm): through-plane, thick slices 6 mm apart would lose their
    top and bottom slices to even a small 3D erosion. A mask eroded to nothing falls back to the
    head mask, so tiny or cropped fields of view still get a fit.
    """
    if erosion_mm <= 0:
        return head
    array = sitk.GetArrayViewFromImage(head) > 0
    spacing = head.GetSpacing()[1::-1]  # (row, column) mm of each (y, x) plane
    inner = np.stack(
        [distance_transform_edt(plane, sampling=spacing) > erosion_mm for plane in array]
    )
    if inner.sum() < 0.05 * array.sum():
        return head
    mask = sitk.GetImageFromArray(inner.astype(np.uint8))
    mask.CopyInformation(head)
    return mask
