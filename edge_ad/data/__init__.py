"""Data: the dataset layouts users have (MVTec AD, MVTec AD 2, MVTec LOCO, VisA, plain folders),
image reading, and the synthetic data generator.

Nothing here imports torch: every layout gives a plain indexable `SampleDataset` that torch's
DataLoader accepts, and the runtime reuses the image conversion. `load_source(DataSource(...))` is the
entry point: it detects (or checks) the layout and returns the category's train/validation/test splits.
"""

from edge_ad.imaging import ImageReadError, read_image, to_rgb_uint8
from edge_ad.data.samples import DatasetError, Sample, SampleDataset, Splits
from edge_ad.data.mvtec import MVTecDataset
from edge_ad.data.layouts import FORMATS, DataSource, detect_format, load_source

__all__ = ["FORMATS", "DataSource", "DatasetError", "ImageReadError", "MVTecDataset", "Sample", "SampleDataset",
           "Splits", "detect_format", "load_source", "read_image", "to_rgb_uint8"]
