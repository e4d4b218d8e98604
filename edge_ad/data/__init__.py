"""Data: the MVTec-AD-layout folder dataset, image reading, and the synthetic data generator.

Nothing here imports torch: the dataset is a plain indexable object that torch's DataLoader accepts,
and the runtime reuses the image conversion.
"""

from edge_ad.imaging import ImageReadError, read_image, to_rgb_uint8
from edge_ad.data.mvtec import DatasetError, MVTecDataset, Sample

__all__ = ["DatasetError", "ImageReadError", "MVTecDataset", "Sample", "read_image", "to_rgb_uint8"]
