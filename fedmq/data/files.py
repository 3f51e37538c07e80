"""Read one data owner's file (a checked `fedmq.data.spec.DataSpec`) into tensors, with the
libraries a user of each format expects; never pickle.

    read(spec) -> Raw(inputs, labels)
      imagefolder  torchvision.datasets.ImageFolder (one subfolder per class), the spec's
                   resize/center_crop/grayscale as torchvision.transforms.v2 steps, then
                   float32 in [0, 1]: inputs N x C x H x W; labels the class folder names
      csv          pandas.read_csv;                       inputs N x F float32 (the feature
      parquet      pandas.read_parquet(engine="pyarrow")  columns); labels the target column
      npz          numpy.load(allow_pickle=False);        inputs the features array as float32,
                                                          labels the target array

`labels` are left raw (numbers or strings): a key's train and test files are encoded together
(`fedmq.data.prepare.encode_targets`), so a class gets the same index in both. Every problem
with a file's contents raises ValueError with one line naming what is wrong (the caller adds
which --data it is).
"""
from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import numpy as np
import torch

from fedmq.data.spec import DataSpec, Transform


class Raw(NamedTuple):
    """inputs: float32 tensor, N x ...; labels: numpy array of N raw targets (numbers or
    strings; float targets may be N x K)."""
    inputs: torch.Tensor
    labels: np.ndarray


def read(spec: DataSpec) -> Raw:
    """The file of `spec` (format already filled in by `check_specs`) as tensors."""
    if spec.format == "imagefolder":
        return read_imagefolder(spec.path, spec.transforms)
    if spec.format in ("csv", "parquet"):
        return read_table(spec.path, spec.format, spec.target, spec.features)
    if spec.format == "npz":
        return read_npz(spec.path, spec.features_array, spec.target_array)
    raise ValueError(f"unknown format {spec.format!r}")


# --- images -----------------------------------------------------------------------------------

def image_steps(transforms: tuple[Transform, ...]) -> list:
    """The torchvision.transforms.v2 steps for resize/center_crop/grayscale, in order
    (normalize is applied later, to the whole split)."""
    from torchvision.transforms import v2

    make = {"resize": lambda v: v2.Resize(v), "center_crop": lambda v: v2.CenterCrop(v),
            "grayscale": lambda v: v2.Grayscale(num_output_channels=1)}
    return [make[t.name](t.value) for t in transforms if t.name in make]


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(n) for n in t.shape)


def _no_linked_folders(root: pathlib.Path) -> None:
    """ImageFolder follows links to folders, and a link back up loops for ever: refuse them
    (a linked image file is read as any other)."""
    for path in root.rglob("*"):
        if path.is_symlink() and path.is_dir():
            raise ValueError(f"{path} links to a folder; an image folder's class folders and "
                             f"their subfolders must be real folders (links to images are "
                             f"fine)")
        if not path.is_dir() and not path.is_file():  # a FIFO, a socket, a device: would block
            raise ValueError(f"{path} is not a regular file")


def read_imagefolder(root: pathlib.Path, transforms: tuple[Transform, ...] = ()) -> Raw:
    """Every image under `root/<class>/` (ImageFolder's extensions), transformed, stacked into
    float32 N x C x H x W in [0, 1] (RGB, C = 3, unless grayscale: C = 1); labels the class
    names. ValueError: no class folder or no image, an unreadable image (named), or images
    of different shapes after the transforms (the first two named)."""
    import PIL.Image
    from torchvision import datasets
    from torchvision.transforms import v2

    _no_linked_folders(root)
    pipeline = v2.Compose([v2.ToImage(), *image_steps(transforms),
                           v2.ToDtype(torch.float32, scale=True)])
    try:
        folder = datasets.ImageFolder(str(root), transform=pipeline, allow_empty=True)
    except FileNotFoundError as exc:  # no class folder
        raise ValueError(f"{exc} (an image folder holds one subfolder of images per class)") \
            from None
    if not folder.samples:
        raise ValueError(f"no image in its class folders ({', '.join(folder.classes)}); "
                         f"ImageFolder reads {', '.join(datasets.folder.IMG_EXTENSIONS)}")
    images = []
    for i, (path, _) in enumerate(folder.samples):
        try:
            image, _ = folder[i]
        except (OSError, PIL.Image.DecompressionBombError) as exc:  # unreadable, a bomb
            raise ValueError(f"cannot read image {path}: {exc}") from None
        if images and image.shape != images[0].shape:
            raise ValueError(f"image {path} is {_shape(image)} (C x H x W) but "
                             f"{folder.samples[0][0]} is {_shape(images[0])}: every image must "
                             f"end up one shape; give --transform resize=HxW (or "
                             f"resize=N,center_crop=N)")
        images.append(image)
    labels = np.array([folder.classes[t] for t in folder.targets], dtype=object)
    return Raw(torch.stack(images), labels)


# --- tables -----------------------------------------------------------------------------------

def _pandas():
    try:
        import pandas
    except ImportError:  # pragma: no cover - pandas comes with fedmq[data]
        raise ValueError("reading csv and parquet needs pandas: pip install 'fedmq[data]'") \
            from None
    return pandas


#: the widest table read (columns), and the longest csv header (bytes)
MAX_COLUMNS = 1 << 16
MAX_HEADER_BYTES = 16 << 20


def _finite(values: torch.Tensor, what: str) -> None:
    """ValueError when `values` holds NaN or infinite numbers (1e400 in a csv is inf)."""
    if values.is_floating_point() and not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"{bad} {what} values are NaN or infinite (or beyond float32)")


def _columns(names) -> str:
    return ", ".join(str(n) for n in names)


def read_table(path: pathlib.Path, fmt: str, target: str,
               features: tuple[str, ...] | None = None) -> Raw:
    """A csv (pandas.read_csv) or parquet (pandas.read_parquet, pyarrow) table: inputs the
    feature columns (default: all but `target`) as float32 N x F, labels the target column
    (integers as int64, floats as float64, anything else as strings). ValueError: unreadable
    file, a missing column (the error lists the table's columns), non-numeric feature columns
    or missing values (named)."""
    pd = _pandas()
    if fmt == "csv":  # the header first: a file of a million columns is refused, not parsed
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline(MAX_HEADER_BYTES + 1)
        if len(header) > MAX_HEADER_BYTES or header.count(",") >= MAX_COLUMNS:
            raise ValueError(f"its header is over {MAX_HEADER_BYTES} bytes or "
                             f"{MAX_COLUMNS} columns")
    try:
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path, engine="pyarrow")
    except ImportError as exc:
        raise ValueError(f"reading parquet needs pyarrow: pip install 'fedmq[data]' ({exc})") \
            from None
    except (ValueError, OSError) as exc:  # pandas' ParserError, pyarrow's ArrowInvalid, ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read it as {fmt}: {first_line}") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if len(columns) > MAX_COLUMNS:
        raise ValueError(f"{len(columns)} columns, more than {MAX_COLUMNS}")
    if not len(frame):
        raise ValueError(f"no rows (only a header: {_columns(columns[:10])})")
    if target not in columns:
        raise ValueError(f"no target column {target!r}; its columns: {_columns(columns)}")
    wanted = list(features) if features else [c for c in columns if c != target]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"no feature column {_columns(missing)}; its columns: "
                         f"{_columns(columns)}")
    if target in wanted:
        raise ValueError(f"the target column {target!r} is also a feature column")
    if not wanted:
        raise ValueError(f"no feature column besides the target {target!r}")
    text = [f"{c} ({frame[c].dtype})" for c in wanted
            if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise ValueError(f"non-numeric feature columns: {', '.join(text)}; encode them as "
                         f"numbers, or choose the columns with --features")
    blank = [c for c in wanted if frame[c].isna().any()]
    if blank:
        raise ValueError(f"missing values in feature columns: {_columns(blank)}")
    if frame[target].isna().any():
        raise ValueError(f"{int(frame[target].isna().sum())} missing values in the target "
                         f"column {target!r}")
    inputs = torch.from_numpy(frame[wanted].to_numpy(dtype=np.float32, copy=True))
    _finite(inputs, "feature")
    series = frame[target]
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        labels = series.to_numpy(dtype=np.int64)
    elif pd.api.types.is_float_dtype(series):
        labels = series.to_numpy(dtype=np.float64)
    else:
        labels = series.astype(str).to_numpy(dtype=object)
    return Raw(inputs, labels)


# --- numpy archives ---------------------------------------------------------------------------

#: the largest array read from an npz archive, by the size its header declares
MAX_ARRAY_BYTES = 8 << 30


def _check_declared_size(archive: Any, name: str) -> None:
    """ValueError when array `name`'s header declares more than MAX_ARRAY_BYTES (a few MB of
    zeros compress to any size: the header is read, not the data)."""
    with archive.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise ValueError(f"array {name!r} declares {shape} {dtype}: {size} bytes, more than "
                         f"{MAX_ARRAY_BYTES}")


def read_npz(path: pathlib.Path, features_array: str = "x", target_array: str = "y") -> Raw:
    """Two arrays of a .npz archive, read with numpy.load(allow_pickle=False): inputs the
    numeric `features_array` as float32 (N x ...), labels `target_array` (N, numbers or
    strings). ValueError: not an npz archive, a missing array (the error lists the archive's),
    an object array (refused: numpy stores those pickled), non-numeric inputs, row counts
    that differ."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # a pickle file: ValueError, garbage: OSError
        raise ValueError(f"cannot read it as npz: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError("it is a single .npy array, not an npz archive of named arrays "
                         "(numpy.savez)")
    with archive:
        arrays = []
        for name, role in ((features_array, "--features-array"), (target_array, "--target-array")):
            if name not in archive.files:
                raise ValueError(f"no array {name!r} ({role}); its arrays: "
                                 f"{_columns(archive.files)}")
            _check_declared_size(archive, name)
            try:
                arrays.append(archive[name])
            except ValueError:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise ValueError(f"array {name!r} holds Python objects, which numpy stores "
                                 f"pickled: refused (fedmq reads npz with allow_pickle=False; "
                                 f"save numbers or strings)") from None
    x, y = arrays
    if x.dtype.kind not in "biuf":
        raise ValueError(f"the features array {features_array!r} is {x.dtype}, not numeric")
    if y.dtype.kind not in "biufUS":
        raise ValueError(f"the target array {target_array!r} is {y.dtype}: give numbers or "
                         f"strings")
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise ValueError(f"{features_array!r} is {x.shape} and {target_array!r} {y.shape}: "
                         f"both need one row per sample")
    if y.dtype.kind == "u" and y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"the target array {target_array!r} holds values above 2**63 - 1, "
                         f"which int64 labels cannot hold")
    labels = y.astype(str).astype(object) if y.dtype.kind in "US" else y
    inputs = torch.from_numpy(np.array(x, dtype=np.float32))
    _finite(inputs, "input")
    return Raw(inputs, labels)
