"""What `fedmq worker --data PATH ...` asks for: the options of one data owner's file, parsed
and checked before anything is read (no torch, pandas or torchvision here).

    --data PATH            starts a dataset; the options below apply to the --data before them
      --key NAME           its tag: tensors are found by #NAME (required)
      --format F           imagefolder | csv | parquet | npz (default: from PATH)
      --split S            train | test | a fraction in (0, 1) held out as #test (default train)
      --seed N             seed of a fractional split (default 0)
      --target COLUMN      csv/parquet: the label column (required)
      --features A,B       csv/parquet: the input columns (default: every other column)
      --features-array X   npz: the inputs' array (default x)
      --target-array Y     npz: the targets' array (default y)
      --tags A,B           more search tags (# added when missing)
      --transform T,U      resize=N|HxW, center_crop=N|HxW, grayscale (imagefolder);
                           normalize[=M1;M2/S1;S2] (every format)

`--key` right after `--dataset NAME` names the named dataset's tag instead (default: NAME).
Every parser raises ValueError with one line naming the option and what it allows;
`check_specs` checks a whole command line (a key's train and test parts, formats, files).
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Any, Callable, NamedTuple

FORMATS = ("imagefolder", "csv", "parquet", "npz")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
SPLITS = ("train", "test")
#: transforms by name: which formats take them, and what their value looks like
TRANSFORMS = {"resize": ("imagefolder",), "center_crop": ("imagefolder",),
              "grayscale": ("imagefolder",), "normalize": FORMATS}
TRANSFORM_HELP = "resize=N|HxW, center_crop=N|HxW, grayscale, normalize[=M1;M2/S1;S2]"


class Transform(NamedTuple):
    """One `--transform` item. `value`: resize/center_crop an int (the smaller edge, as
    torchvision's Resize(N)) or an (H, W) pair; grayscale None; normalize None (statistics of
    the key's train split) or (means, stds), tuples of floats, stds > 0."""
    name: str
    value: Any = None


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One `--data PATH` and the options that followed it. `split` is "train", "test" or a
    float in (0, 1): that fraction (seeded by `seed`) is held out as the test split."""
    path: pathlib.Path
    key: str | None = None
    format: str | None = None
    split: str | float = "train"
    seed: int = 0
    target: str | None = None
    features: tuple[str, ...] | None = None
    features_array: str = "x"
    target_array: str = "y"
    tags: tuple[str, ...] = ()
    transforms: tuple[Transform, ...] = ()

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this file fills: ("train",), ("test",) or both for a fraction."""
        return SPLITS if isinstance(self.split, float) else (self.split,)

    def transform(self, name: str) -> Transform | None:
        """The `--transform` item called `name`, or None."""
        return next((t for t in self.transforms if t.name == name), None)


# --- one option's value -----------------------------------------------------------------------

#: tags every dataset already carries (#data #target #train #test): not keys
RESERVED_KEYS = frozenset({"data", "target", "train", "test"})


def parse_key(text: str) -> str:
    """"mnist" or "#mnist" -> "mnist"; a key is one word (letters, digits, - _ .)."""
    key = text.strip().removeprefix("#")
    if not key or not all(c.isalnum() or c in "-_." for c in key):
        raise ValueError(f"bad key {text!r}: one word of letters, digits, '-', '_' or '.'")
    if key in RESERVED_KEYS:
        raise ValueError(f"key {key!r} is a tag fedmq itself gives every dataset "
                         f"({', '.join(sorted(RESERVED_KEYS))}): choose another")
    return key


def parse_format(text: str) -> str:
    """One of FORMATS; ValueError listing them otherwise."""
    if text not in FORMATS:
        raise ValueError(f"unknown format {text!r} (allowed: {', '.join(FORMATS)})")
    return text


def parse_split(text: str) -> str | float:
    """"train", "test", or a fraction strictly between 0 and 1 ("0.2")."""
    if text in SPLITS:
        return text
    try:
        fraction = float(text)
    except ValueError:
        fraction = None
    if fraction is None or not 0 < fraction < 1:
        raise ValueError(f"bad split {text!r}: train, test, or the fraction held out for "
                         f"testing, between 0 and 1 exclusive (e.g. 0.2)")
    return fraction


def parse_seed(text: str) -> int:
    """An integer seed for a fractional --split."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad seed {text!r}: an integer") from None


def parse_names(text: str) -> tuple[str, ...]:
    """"a,b,c" -> ("a", "b", "c"): column or array names."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError(f"no names in {text!r}: give e.g. a,b,c")
    return names


def parse_name(text: str) -> str:
    """One column or array name, stripped; ValueError when empty."""
    if not text.strip():
        raise ValueError("empty name")
    return text.strip()


def parse_tags(text: str) -> tuple[str, ...]:
    """"a,#b" -> ("#a", "#b")."""
    return tuple("#" + name.removeprefix("#") for name in parse_names(text))


def _size(name: str, text: str | None) -> int | tuple[int, int]:
    try:
        sizes = [int(v) for v in (text or "").lower().split("x")]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise ValueError(f"bad {name}={text or ''}: give {name}=N (pixels) or {name}=HxW")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def _normalize_values(text: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if text is None:
        return None
    try:
        means, stds = ([float(v) for v in part.split(";")] for part in text.split("/"))
    except ValueError:
        means = stds = []
    if not means or len(means) != len(stds) or min(stds) <= 0:
        raise ValueError(f"bad normalize={text}: give normalize=M1;M2/S1;S2, as many means as "
                         f"standard deviations (> 0), one per channel or feature")
    return tuple(means), tuple(stds)


def parse_transforms(text: str) -> tuple[Transform, ...]:
    """"resize=32,grayscale,normalize" -> Transforms, in order; unknown names or bad values
    raise ValueError listing the allowed ones."""
    out: list[Transform] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in TRANSFORMS:
            raise ValueError(f"unknown transform {name!r} (allowed: {TRANSFORM_HELP})")
        if any(t.name == name for t in out):
            raise ValueError(f"transform {name!r} given twice")
        if name in ("resize", "center_crop"):
            out.append(Transform(name, _size(name, value if sep else None)))
        elif name == "grayscale":
            if sep:
                raise ValueError(f"grayscale takes no value, got grayscale={value}")
            out.append(Transform(name))
        else:
            out.append(Transform(name, _normalize_values(value if sep else None)))
    if not out:
        raise ValueError(f"no transform in {text!r} (allowed: {TRANSFORM_HELP})")
    return tuple(out)


# --- the command line -------------------------------------------------------------------------

_LAST = "_data_last"  # which of --data / --dataset came last (what --key refers to)
_GIVEN = "_data_given"  # per --data, the options already given


class _StartData(argparse.Action):
    """`--data PATH`: a new DataSpec; the per-data options after it fill it in."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.data = [*(namespace.data or []), DataSpec(pathlib.Path(values))]
        setattr(namespace, _GIVEN, [*getattr(namespace, _GIVEN, []), set()])
        setattr(namespace, _LAST, "data")


class NamedDataset(argparse.Action):
    """`--dataset NAME`: stored as usual; a `--key` right after it names its tag."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.dataset = values
        setattr(namespace, _LAST, "dataset")


class _DataOption(argparse.Action):
    """A per-data option: parsed at once (a bad value exits 2 naming the option) and set on
    the last `--data`; `--key` after `--dataset` sets the named dataset's key."""

    def __init__(self, *args, field: str, parse: Callable[[str], Any], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.field, self.parse = field, parse

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            value = self.parse(values)
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        last = getattr(namespace, _LAST, None)
        if self.field == "key" and last == "dataset":
            namespace.key = value
            return
        if last != "data":
            before = "--data PATH or --dataset NAME" if self.field == "key" else "--data PATH"
            raise argparse.ArgumentError(self, f"applies to the {before} given before it")
        given = getattr(namespace, _GIVEN)[-1]
        spec = namespace.data[-1]
        if self.field in given:
            raise argparse.ArgumentError(self, f"given twice for --data {spec.path}")
        given.add(self.field)
        namespace.data[-1] = dataclasses.replace(spec, **{self.field: value})


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--data PATH` and its per-data options (an argument group) to `parser`; the
    parsed specs land in `args.data` (a list of DataSpec, or None), `--key` after `--dataset`
    in `args.key`. Check them with `check_specs` before reading anything."""
    group = parser.add_argument_group(
        "your own data", "serve a data owner's files: each --data PATH starts a dataset and the "
        "options after it (up to the next --data) apply to it; repeat --data for more datasets "
        "or for a key's test file. Tensors are tagged #KEY #data|#target #train|#test, as "
        "--dataset's are. Example: --data heart.csv --key heart --target disease --split 0.2")
    group.add_argument("--data", action=_StartData, metavar="PATH", default=None,
                       help="a file (csv, parquet, npz) or an image folder (one subfolder per "
                            "class, as torchvision's ImageFolder); repeatable (default: none)")
    options = [
        ("--key", "key", parse_key, "NAME",
         "the dataset's key: its tensors are tagged #NAME (required for --data; right after "
         "--dataset it renames that dataset's tag, e.g. --dataset mnist5k --key mnist; "
         "default: none)"),
        ("--format", "format", parse_format, "FORMAT",
         f"{' | '.join(FORMATS)}; default: a directory is an imagefolder, else from the file's "
         f"suffix ({', '.join(SUFFIXES)})"),
        ("--split", "split", parse_split, "train|test|FRACTION",
         "the split this file holds: train (default), test, or a fraction in (0, 1) of its "
         "samples held out at random as #test, the rest #train"),
        ("--seed", "seed", parse_seed, "N", "seed of a fractional --split (default 0)"),
        ("--target", "target", parse_name, "COLUMN",
         "csv/parquet: the target column (required, no default). Integer labels stay int64 "
         "classes, "
         "strings become sorted class indices, floats are float32 regression targets"),
        ("--features", "features", parse_names, "A,B,...",
         "csv/parquet: the input columns, all numeric (default: every column but --target)"),
        ("--features-array", "features_array", parse_name, "NAME",
         "npz: the array of inputs (default x); arrays are read with allow_pickle=False"),
        ("--target-array", "target_array", parse_name, "NAME",
         "npz: the array of targets (default y)"),
        ("--tags", "tags", parse_tags, "A,B,...",
         "more search tags for both tensors (default: none)"),
        ("--transform", "transforms", parse_transforms, "T,U,...",
         f"{TRANSFORM_HELP}. imagefolder: torchvision's Resize (N: the smaller edge), "
         f"CenterCrop and Grayscale, in the order given; every image must end up one shape. "
         f"normalize (any format, applied last): per channel (images) or per feature, with "
         f"the mean/std of the key's train split, or the given ones (default: none)"),
    ]
    for flag, field, parse, metavar, help_text in options:
        group.add_argument(flag, action=_DataOption, field=field, parse=parse, metavar=metavar,
                           help=help_text, default=argparse.SUPPRESS if field != "key" else None)


# --- a whole command line ---------------------------------------------------------------------

def _completed(spec: DataSpec) -> DataSpec:
    """`spec` with its format filled in; ValueError for a missing file, an unknown format, or
    options that do not fit it."""
    where = f"--data {spec.path}"
    if not spec.path.exists():
        raise ValueError(f"{where}: no such file or directory")
    if spec.key is None:
        raise ValueError(f"{where}: give --key NAME after it (its tensors are tagged #NAME)")
    fmt = spec.format or ("imagefolder" if spec.path.is_dir()
                          else SUFFIXES.get(spec.path.suffix.lower()))
    if fmt is None:
        raise ValueError(f"{where}: cannot tell its format from the name; give --format "
                         f"{'|'.join(FORMATS)}")
    if (fmt == "imagefolder") != spec.path.is_dir():
        raise ValueError(f"{where}: --format {fmt} needs "
                         f"{'a directory' if fmt == 'imagefolder' else 'a file'}")
    if fmt in ("csv", "parquet") and spec.target is None:
        raise ValueError(f"{where}: give --target COLUMN (the label column)")
    if fmt not in ("csv", "parquet") and (spec.target or spec.features):
        hint = {"npz": "use --features-array / --target-array",
                "imagefolder": "its targets are its class folders"}[fmt]
        raise ValueError(f"{where}: --target and --features are for csv and parquet ({hint})")
    if fmt != "npz" and (spec.features_array, spec.target_array) != ("x", "y"):
        raise ValueError(f"{where}: --features-array and --target-array are for npz")
    for t in spec.transforms:
        if fmt not in TRANSFORMS[t.name]:
            raise ValueError(f"{where}: --transform {t.name} is for imagefolder only "
                             f"({fmt} takes normalize)")
    return dataclasses.replace(spec, format=fmt)


def check_specs(specs: list[DataSpec] | None,
                named: tuple[str, str] | None = None) -> list[DataSpec]:
    """The specs completed (formats filled in), after checking them together: one file per
    key and split (`named`: the (key, split) a `--dataset` takes), the same transforms for a
    key's files, and a train split on this worker for a key that computes `normalize`.
    Raises ValueError naming the --data at fault."""
    done = [_completed(spec) for spec in specs or []]
    held = {named: "--dataset"} if named else {}
    for spec in done:
        for split in spec.splits:
            if (spec.key, split) in held:
                raise ValueError(f"--data {spec.path}: key {spec.key!r} already has its "
                                 f"{split} split from {held[(spec.key, split)]}")
            held[(spec.key, split)] = f"--data {spec.path}"
    for spec in done:
        first = next(s for s in done if s.key == spec.key)
        if spec.transforms != first.transforms:
            raise ValueError(f"--data {spec.path}: --transform differs from --data {first.path} "
                             f"of the same key {spec.key!r}; give both the same")
        norm = spec.transform("normalize")
        if norm and norm.value is None \
                and held.get((spec.key, "train"), "--dataset") == "--dataset":
            raise ValueError(f"--data {spec.path}: normalize without values uses the train split "
                             f"of key {spec.key!r}, which no --data of this worker holds; give "
                             f"normalize=M1;M2/S1;S2 (the train split's statistics)")
    return done
