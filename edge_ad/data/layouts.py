"""Which layout a dataset folder has, and loading it: the one entry point training and evaluation use.

Layouts (`--format`): mvtec (MVTec AD), mvtec2 (MVTec AD 2), loco (MVTec LOCO AD), visa (VisA) and
folder (plain folders of good and defective images). Without --format the layout is detected from
the folder's names, in that order of specificity: VisA's split file, MVTec AD 2's test_public/,
LOCO's logical_anomalies/structural_anomalies (or one mask folder per image), then train/ (MVTec AD),
then a folder of images or good/ (plain folders). A --format the folder does not follow is refused,
saying which layout it does look like.

A `DataSource` says where one category is, as given (folder, format, VisA object, or --good/--bad/
--masks); `load_source` returns its splits and the source resolved (absolute paths, the layout
named), which is what a run records so that `eval` and `report` read the same images again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from edge_ad.data.folder import folder_parts, load_folder
from edge_ad.data.loco import load_loco, looks_like_loco
from edge_ad.data.mvtec import load_mvtec
from edge_ad.data.mvtec2 import load_mvtec2, looks_like_mvtec2
from edge_ad.data.samples import DatasetError, Splits
from edge_ad.data.visa import load_visa, visa_root

__all__ = ["FORMATS", "DataSource", "detect_format", "load_source"]

FORMATS = {"mvtec": "MVTec AD (train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png)",
           "mvtec2": "MVTec AD 2 (train/good, validation/good, test_public/good|bad, test_public/ground_truth/bad)",
           "loco": "MVTec LOCO AD (train/good, validation/good, test/logical_anomalies|structural_anomalies, "
                   "ground_truth/<defect>/<name>/000.png)",
           "visa": "VisA (split_csv/1cls.csv, <object>/Data/Images, <object>/Data/Masks)",
           "folder": "plain folders (a folder of good images, or good/ [bad/ masks/])"}
_ALSO_FITS = {("loco", "mvtec")}    # (asked, detected): a LOCO category without test images looks like MVTec AD


@dataclass(frozen=True)
class DataSource:
    """One category's images: `path` (a dataset folder; `format` None = detect; `category` = the VisA
    object when `path` is the VisA root), or plain folders `good` [`bad` `masks`]."""

    path: str | None = None
    format: str | None = None
    category: str | None = None
    good: str | None = None
    bad: str | None = None
    masks: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def of(cls, value: "str | Path | dict | DataSource") -> "DataSource":
        """A source from a folder path, a dict (as run.json records it) or a DataSource."""
        if isinstance(value, DataSource):
            return value
        if isinstance(value, (str, Path)):
            return cls(path=str(value))
        if isinstance(value, dict):
            names = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - names)
            if unknown or not all(v is None or isinstance(v, str) for v in value.values()):
                raise ValueError(f"a data source has the string fields {', '.join(sorted(names))}; got {value!r}")
            return cls(**value)
        raise ValueError(f"a data source is a folder path or a dict of {', '.join(f.name for f in fields(cls))}, "
                         f"got {type(value).__name__}")

    def folder(self) -> str:
        """The folder that names this source (the dataset folder, or the good images' folder)."""
        return self.path if self.path is not None else str(self.good)

    def name(self) -> str:
        """The category's name: the VisA object, else the folder's name (its parent's for a good/ folder)."""
        if self.category:
            return self.category
        folder = Path(self.folder()).resolve()
        return folder.parent.name if folder.name == "good" and self.path is None else folder.name


def detect_format(folder: Path) -> str | None:
    """The layout `folder` follows (a FORMATS key), or None when it follows none of them."""
    if visa_root(folder) is not None:
        return "visa"
    if looks_like_mvtec2(folder):
        return "mvtec2"
    if looks_like_loco(folder):
        return "loco"
    if (folder / "train").is_dir():
        return "mvtec"
    if folder_parts(folder) is not None:
        return "folder"
    return None


def load_source(source: DataSource) -> tuple[Splits, DataSource]:
    """The splits of one category, and the source resolved (absolute paths, its format named)."""
    if source.format is not None and source.format not in FORMATS:
        raise DatasetError(f"unknown dataset format {source.format!r}; choose one of {', '.join(FORMATS)}")
    if source.path is None:
        return _plain(source)
    if source.good is not None or source.bad is not None or source.masks is not None:
        raise DatasetError("give a dataset folder (--data) or plain folders (--good [--bad --masks]), not both")
    folder = Path(source.path).resolve()
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {source.path}")
    detected = detect_format(folder)
    fmt = source.format or detected
    if fmt is None:
        raise DatasetError(f"{source.path} follows none of the dataset layouts edge_ad reads: "
                           + "; ".join(FORMATS.values()) + ". Arrange it so, or use --good DIR [--bad DIR]")
    if detected is not None and fmt != detected and (fmt, detected) not in _ALSO_FITS:
        raise DatasetError(f"{source.path} does not follow the --format {fmt} layout, {FORMATS[fmt]}; it looks "
                           f"like {FORMATS[detected]}: pass --format {detected}, or leave --format out")
    if source.category is not None and fmt != "visa":
        raise DatasetError(f"--category names a VisA object; {source.path} is {FORMATS[fmt].split(' (')[0]}: "
                           "give the category's own folder as --data instead")
    return _load(folder, fmt, source)


def _load(folder: Path, fmt: str, source: DataSource) -> tuple[Splits, DataSource]:
    resolved = DataSource(path=str(folder), format=fmt)
    if fmt == "visa":
        found = visa_root(folder)
        if found is None:
            raise DatasetError(f"{folder} is not a VisA root (no split_csv/1cls.csv) nor an object folder of one")
        root, category = found
        category = source.category or category
        if source.category and found[1] and source.category != found[1]:
            raise DatasetError(f"--category {source.category} differs from the object folder {folder.name} given")
        splits = load_visa(root, category)
        path = root / category if (root / category).is_dir() else root
        return splits, DataSource(path=str(path), format=fmt, category=None if path != root else category)
    if fmt == "folder":
        parts = folder_parts(folder)
        if parts is None:
            raise DatasetError(f"{folder} holds no images and no good/ folder of images: the plain-folder layout is a "
                               "folder of good images, or good/ [bad/ masks/]; or use --good DIR [--bad DIR]")
        return load_folder(*parts), resolved
    loaders = {"mvtec": load_mvtec, "mvtec2": load_mvtec2, "loco": load_loco}
    return loaders[fmt](folder), resolved


def _plain(source: DataSource) -> tuple[Splits, DataSource]:
    """--good DIR [--bad DIR] [--masks DIR]."""
    if source.good is None:
        raise DatasetError("no data given: pass --data DIR (a dataset folder) or --good DIR (good images)")
    if source.format not in (None, "folder"):
        raise DatasetError(f"--good/--bad/--masks are plain folders; --format {source.format} is for --data DIR")
    paths = {k: Path(v).resolve() if v is not None else None
             for k, v in (("good", source.good), ("bad", source.bad), ("masks", source.masks))}
    splits = load_folder(paths["good"], paths["bad"], paths["masks"])
    resolved = replace(source, format="folder", **{k: str(v) for k, v in paths.items() if v is not None})
    return splits, resolved
