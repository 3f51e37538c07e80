"""`fedmq worker --data PATH ...`: a data owner's own files (csv, parquet, npz, image folders)
read into tagged tensors, bad input refused with one line before anything is read, and a real
worker service serving them to a client that finds them by tag."""
from __future__ import annotations

import argparse
import logging
import pathlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fedmq.cli import build_parser, main
from fedmq.data import prepare
from fedmq.data.spec import DataSpec, Transform, check_specs, parse_split, parse_transforms
from fedmq.data.worker_data import holdings


def worker_args(*argv: str) -> argparse.Namespace:
    """`fedmq worker --id alice ARGV` parsed, with the one id as run_worker passes it."""
    args = build_parser().parse_args(["worker", "--id", "alice", *argv])
    return argparse.Namespace(**{**vars(args), "id": "alice"})


def held(*argv: str) -> dict[tuple, torch.Tensor]:
    """holdings() of `fedmq worker --id alice ARGV`, by tags."""
    return {tags: tensor for tensor, tags, _ in holdings(worker_args(*argv))}


def make_table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(20, 80, n), "chol": rng.normal(200, 30, n),
                         "smoker": rng.integers(0, 2, n).astype(bool),
                         "label": rng.integers(0, 3, n)})


def make_images(root: pathlib.Path, sizes: dict[str, list[tuple[int, int]]],
                seed: int = 0) -> pathlib.Path:
    """root/<class>/<i>.png: one RGB PNG of (height, width) per entry."""
    rng = np.random.default_rng(seed)
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(shapes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.png")
    return root


# --- csv and parquet --------------------------------------------------------------------------

def test_csv_is_served_under_its_key_with_pysyft_tags(tmp_path, caplog):
    frame = make_table()
    frame.to_csv(tmp_path / "heart.csv", index=False)
    with caplog.at_level(logging.INFO, logger="fedmq.data"):
        found = holdings(worker_args("--data", str(tmp_path / "heart.csv"), "--key", "heart",
                                     "--target", "label", "--tags", "clinic,#2024"))
    (x, x_tags, description), (y, y_tags, _) = found
    assert x_tags == ("#heart", "#data", "#train", "#clinic", "#2024")
    assert y_tags == ("#heart", "#target", "#train", "#clinic", "#2024")
    assert x.dtype == torch.float32 and x.shape == (40, 3)
    expected = frame[["age", "chol", "smoker"]].to_numpy(dtype=np.float32)
    assert torch.equal(x, torch.from_numpy(expected))
    assert y.dtype == torch.int64 and y.tolist() == frame["label"].tolist()
    assert "heart train set: 40 samples of heart.csv" in description
    counts = np.bincount(frame["label"], minlength=3)
    line, = [r.getMessage() for r in caplog.records if "per label" in r.getMessage()]
    assert f"per label: 0: {counts[0]}, 1: {counts[1]}, 2: {counts[2]}" in line


def test_string_labels_get_the_same_class_index_in_the_train_and_test_files(tmp_path, caplog):
    train = pd.DataFrame({"f": [1., 2, 3, 4], "kind": ["eel", "cat", "dog", "cat"]})
    test = pd.DataFrame({"f": [5., 6], "kind": ["eel", "eel"]})  # no cat, no dog
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    with caplog.at_level(logging.INFO, logger="fedmq.data"):
        got = held("--data", str(tmp_path / "train.csv"), "--key", "zoo", "--target", "kind",
                   "--data", str(tmp_path / "test.csv"), "--key", "zoo", "--target", "kind",
                   "--split", "test")
    assert got[("#zoo", "#target", "#train")].tolist() == [2, 0, 1, 0]
    assert got[("#zoo", "#target", "#test")].tolist() == [2, 2]  # eel is 2 here too
    assert got[("#zoo", "#data", "#test")].tolist() == [[5.], [6.]]
    assert any("classes 0 cat, 1 dog, 2 eel" in r.getMessage() for r in caplog.records)


def test_float_target_is_a_float32_regression_target(tmp_path):
    pd.DataFrame({"rooms": [3, 4, 5], "price": [1.5, 2.25, 3.0]}).to_csv(tmp_path / "h.csv",
                                                                        index=False)
    got = held("--data", str(tmp_path / "h.csv"), "--key", "houses", "--target", "price")
    y = got[("#houses", "#target", "#train")]
    assert y.dtype == torch.float32 and y.tolist() == [1.5, 2.25, 3.0]


def test_parquet_with_chosen_features_and_a_seeded_fraction_held_out(tmp_path):
    frame = make_table(50)
    frame["note"] = "free text"  # not a feature: left out with --features
    frame.to_parquet(tmp_path / "heart.parquet")
    argv = ("--data", str(tmp_path / "heart.parquet"), "--key", "heart", "--target", "label",
            "--features", "chol,age", "--split", "0.2", "--seed", "3")
    got = held(*argv)
    x_train, x_test = got[("#heart", "#data", "#train")], got[("#heart", "#data", "#test")]
    y_train, y_test = got[("#heart", "#target", "#train")], got[("#heart", "#target", "#test")]
    assert (len(x_train), len(x_test)) == (40, 10) and (len(y_train), len(y_test)) == (40, 10)
    rows = frame[["chol", "age"]].to_numpy(dtype=np.float32)
    train_idx, test_idx = prepare.split_fraction(50, 0.2, 3)
    assert torch.equal(x_test, torch.from_numpy(rows)[test_idx])
    assert torch.equal(y_train, torch.tensor(frame["label"].to_numpy())[train_idx])
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(50))
    assert torch.equal(held(*argv)[("#heart", "#data", "#test")], x_test)  # seeded
    other = held(*argv[:-1], "4")[("#heart", "#data", "#test")]
    assert not torch.equal(other, x_test)


def test_normalize_uses_the_train_statistics_for_the_test_split_too(tmp_path):
    frame = make_table(60)
    frame.to_csv(tmp_path / "heart.csv", index=False)
    got = held("--data", str(tmp_path / "heart.csv"), "--key", "heart", "--target", "label",
               "--split", "0.5", "--transform", "normalize")
    x_train, x_test = got[("#heart", "#data", "#train")], got[("#heart", "#data", "#test")]
    assert torch.allclose(x_train.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x_train.std(0, correction=0), torch.ones(3), atol=1e-5)
    raw = torch.from_numpy(frame[["age", "chol", "smoker"]].to_numpy(dtype=np.float32))
    train_idx, test_idx = prepare.split_fraction(60, 0.5, 0)
    mean, std = raw[train_idx].mean(0), raw[train_idx].std(0, correction=0)
    assert torch.allclose(x_test, (raw[test_idx] - mean) / std, atol=1e-5)
    given = held("--data", str(tmp_path / "heart.csv"), "--key", "heart", "--target", "label",
                 "--transform", "normalize=50;200;0/10;20;1")
    assert torch.allclose(given[("#heart", "#data", "#train")],
                          (raw - torch.tensor([50., 200, 0])) / torch.tensor([10., 20, 1]))


# --- npz --------------------------------------------------------------------------------------

def test_npz_arrays_by_name(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 1, 0, 1, 1]), inputs=x * 2,
             names=np.array(["b", "a", "b", "a", "a", "a"]))
    got = held("--data", str(tmp_path / "d.npz"), "--key", "d")
    assert torch.equal(got[("#d", "#data", "#train")], torch.from_numpy(x).float())
    assert got[("#d", "#target", "#train")].tolist() == [0, 1, 1, 0, 1, 1]
    got = held("--data", str(tmp_path / "d.npz"), "--key", "d", "--features-array", "inputs",
               "--target-array", "names")
    assert torch.equal(got[("#d", "#data", "#train")], torch.from_numpy(x * 2).float())
    assert got[("#d", "#target", "#train")].tolist() == [1, 0, 1, 0, 0, 0]


def test_a_pickle_inside_an_npz_is_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", x=np.zeros((2, 2)), y=np.array([{"a": 1}, None]))
    with pytest.raises(ValueError, match=r"--data .*evil.npz: array 'y' holds Python objects.*"
                                         r"allow_pickle=False"):
        holdings(worker_args("--data", str(tmp_path / "evil.npz"), "--key", "e"))
    import pickle
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x": 1}))  # a pickle named .npz
    with pytest.raises(ValueError, match="cannot read it as npz"):
        holdings(worker_args("--data", str(tmp_path / "p.npz"), "--key", "e"))
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(ValueError, match=r"no array 'labels' \(--target-array\); its arrays: "
                                         r"x, y"):
        holdings(worker_args("--data", str(tmp_path / "ok.npz"), "--key", "e",
                             "--target-array", "labels"))


# --- image folders ----------------------------------------------------------------------------

def test_imagefolder_with_torchvision_transforms_and_per_channel_normalize(tmp_path, caplog):
    root = make_images(tmp_path / "pets", {"dog": [(20, 30)] * 3, "cat": [(30, 20)] * 2})
    with caplog.at_level(logging.INFO, logger="fedmq.data"):
        got = held("--data", str(root), "--key", "pets",
                   "--transform", "resize=12,center_crop=10,grayscale")
    x, y = got[("#pets", "#data", "#train")], got[("#pets", "#target", "#train")]
    assert x.shape == (5, 1, 10, 10) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [0, 0, 1, 1, 1]  # ImageFolder: sorted folder names, cat = 0
    assert any("classes 0 cat, 1 dog" in r.getMessage() for r in caplog.records)
    assert any("per label: 0 cat: 2, 1 dog: 3" in r.getMessage() for r in caplog.records)
    from torchvision.transforms import v2
    first = Image.open(root / "cat" / "0.png")
    pipeline = v2.Compose([v2.ToImage(), v2.Resize(12), v2.CenterCrop(10), v2.Grayscale(),
                           v2.ToDtype(torch.float32, scale=True)])
    assert torch.equal(x[0], pipeline(first))
    rgb = held("--data", str(root), "--key", "pets", "--split", "0.4",
               "--transform", "resize=8x8,normalize")
    train, test = rgb[("#pets", "#data", "#train")], rgb[("#pets", "#data", "#test")]
    assert train.shape == (3, 3, 8, 8) and test.shape == (2, 3, 8, 8)
    assert torch.allclose(train.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(train.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-5)


def test_mixed_image_sizes_without_resize_name_the_file(tmp_path):
    root = make_images(tmp_path / "pets", {"cat": [(8, 8)], "dog": [(8, 8), (9, 8)]})
    with pytest.raises(ValueError, match=r"image .*dog/1.png is 3x9x8 \(C x H x W\) but "
                                         r".*cat/0.png is 3x8x8.*resize="):
        holdings(worker_args("--data", str(root), "--key", "pets"))
    assert held("--data", str(root), "--key", "pets", "--transform", "resize=4x4")[
        ("#pets", "#data", "#train")].shape == (3, 3, 4, 4)


def test_an_unreadable_image_and_an_empty_folder_are_named(tmp_path):
    root = make_images(tmp_path / "pets", {"cat": [(8, 8)]})
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png"):
        holdings(worker_args("--data", str(root), "--key", "pets"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--data .*empty: .*class folder"):
        holdings(worker_args("--data", str(tmp_path / "empty"), "--key", "e"))


# --- bad options and files: one line, before anything is read ---------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--target", "y"], "argument --target: applies to the --data PATH given before it"),
    (["--key", "k"], "argument --key: applies to the --data PATH or --dataset NAME"),
    (["--data", "x", "--format", "xlsx"], "unknown format 'xlsx' (allowed: imagefolder, csv, "
                                          "parquet, npz)"),
    (["--data", "x", "--transform", "blur=3"], "unknown transform 'blur' (allowed: resize=N|HxW"),
    (["--data", "x", "--transform", "resize=big"], "bad resize=big"),
    (["--data", "x", "--transform", "normalize=1;2/3"], "bad normalize=1;2/3"),
    (["--data", "x", "--split", "1"], "bad split '1'"),
    (["--data", "x", "--split", "0"], "bad split '0'"),
    (["--data", "x", "--split", "-0.5"], "bad split '-0.5'"),
    (["--data", "x", "--split", "valid"], "bad split 'valid'"),
    (["--data", "x", "--key", "a", "--key", "b"], "given twice for --data x"),
    (["--data", "x", "--key", "two words"], "bad key 'two words'"),
])
def test_bad_options_exit_2_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["worker", "--id", "a", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_option_parsers_accept_what_the_help_says():
    assert parse_split("train") == "train" and parse_split("0.25") == 0.25
    assert parse_transforms("resize=32, center-crop=28x24,grayscale,normalize=0.5/0.2") == (
        Transform("resize", 32), Transform("center_crop", (28, 24)), Transform("grayscale"),
        Transform("normalize", ((0.5,), (0.2,))))
    with pytest.raises(ValueError, match="given twice"):
        parse_transforms("grayscale,grayscale")


def test_spec_checks_name_the_data_at_fault(tmp_path):
    csv = tmp_path / "t.csv"
    make_table().to_csv(csv, index=False)
    (tmp_path / "t.xlsx").write_bytes(b"")

    def fails(message: str, *specs: DataSpec, named=None) -> None:
        with pytest.raises(ValueError, match=message):
            check_specs(list(specs), named)

    fails(r"--data .*nope.csv: no such file", DataSpec(tmp_path / "nope.csv", key="k"))
    fails(r"give --key NAME", DataSpec(csv, target="label"))
    fails(r"t.xlsx: cannot tell its format.*--format imagefolder\|csv\|parquet\|npz",
          DataSpec(tmp_path / "t.xlsx", key="k"))
    fails(r"give --target COLUMN", DataSpec(csv, key="k"))
    fails(r"--format imagefolder needs a directory", DataSpec(csv, key="k", format="imagefolder"))
    fails(r"--transform resize is for imagefolder only",
          DataSpec(csv, key="k", target="label", transforms=(Transform("resize", 8),)))
    fails(r"--features-array and --target-array are for npz",
          DataSpec(csv, key="k", target="label", features_array="a"))
    fails(r"key 'k' already has its test split from --data",
          DataSpec(csv, key="k", target="label", split=0.2),
          DataSpec(csv, key="k", target="label", split="test"))
    fails(r"key 'mnist' already has its train split from --dataset",
          DataSpec(csv, key="mnist", target="label"), named=("mnist", "train"))
    norm = (Transform("normalize"),)
    fails(r"normalize without values uses the train split of key 'k'.*normalize=M1;M2/S1;S2",
          DataSpec(csv, key="k", target="label", split="test", transforms=norm))
    fails(r"--transform differs from --data",
          DataSpec(csv, key="k", target="label", transforms=norm),
          DataSpec(csv, key="k", target="label", split="test"))
    assert check_specs([DataSpec(csv, key="k", target="label")])[0].format == "csv"


def test_table_contents_are_checked_with_the_columns_named(tmp_path):
    frame = make_table(10)
    frame["city"] = "Oslo"
    frame.to_csv(tmp_path / "t.csv", index=False)
    args = ("--data", str(tmp_path / "t.csv"), "--key", "t")
    with pytest.raises(ValueError, match=r"no target column 'disease'; its columns: age, chol, "
                                         r"smoker, label, city$"):
        holdings(worker_args(*args, "--target", "disease"))
    with pytest.raises(ValueError, match=r"non-numeric feature columns: city \("):
        holdings(worker_args(*args, "--target", "label"))
    with pytest.raises(ValueError, match=r"no feature column height; its columns"):
        holdings(worker_args(*args, "--target", "label", "--features", "age,height"))
    frame.loc[3, "chol"] = np.nan
    frame.drop(columns="city").to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"missing values in feature columns: chol"):
        holdings(worker_args(*args, "--target", "label"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"bad.parquet: cannot read it as parquet"):
        holdings(worker_args("--data", str(tmp_path / "bad.parquet"), "--key", "b",
                             "--target", "y"))
    pd.DataFrame({"f": range(3), "y": [1, 2, 3]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=r"--split 0.1 of 3 samples leaves no test sample"):
        holdings(worker_args("--data", str(tmp_path / "s.csv"), "--key", "s", "--target", "y",
                             "--split", "0.1"))


def test_the_worker_command_exits_2_with_one_line_before_reading(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "--id", "x", "--url", "amqp://guest:guest@127.0.0.1:1/nowhere",
              "--data", str(tmp_path / "missing.csv"), "--key", "k", "--target", "y"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedmq worker: --data {tmp_path / 'missing.csv'}: no such file or directory"]


# --- the worker: the named datasets' --key, in-process training's find_data, several ids ------

def test_a_named_dataset_takes_a_key_and_mixes_with_files(tmp_path):
    make_table().to_csv(tmp_path / "t.csv", index=False)
    got = held("--dataset", "mnist5k", "--labels", "0-3", "--key", "mnist",
               "--data", str(tmp_path / "t.csv"), "--key", "heart", "--target", "label")
    assert set(got) == {("#mnist", "#data", "#train"), ("#mnist", "#target", "#train"),
                        ("#heart", "#data", "#train"), ("#heart", "#target", "#train")}
    assert got[("#mnist", "#data", "#train")].shape == (1600, 1, 28, 28)
    testing = held("--dataset", "mnist5k", "--testing", "--key", "mnist_testing")
    assert set(testing) == {("#mnist_testing", "#data", "#test"),
                            ("#mnist_testing", "#target", "#test")}
    assert set(held("--dataset", "mnist5k", "--testing")) == {
        ("#mnist5k", "#data", "#test"), ("#mnist5k", "#target", "#test")}  # default: the name


def test_training_finds_the_files_the_worker_holds(tmp_path):
    from fedmq.fl.training import find_data
    from fedmq.service import build_worker, build_workers

    root = make_images(tmp_path / "pets", {"cat": [(6, 6)] * 4, "dog": [(6, 6)] * 4})
    args = worker_args("--data", str(root), "--key", "pets", "--split", "0.25")
    data, target = find_data(build_worker(args), "test", "pets")
    assert data.shape == (2, 3, 6, 6) and target.shape == (2,)
    several = build_workers(args, ["w0", "w1"])
    (_, a), = several["w0"].store.search(["#pets", "#data", "#train"])
    (_, b), = several["w1"].store.search(["#pets", "#data", "#train"])
    assert torch.equal(a.obj, b.obj) and a.obj.data_ptr() != b.obj.data_ptr()


# --- a real worker service on the broker ------------------------------------------------------

@pytest.mark.amqp
@pytest.mark.slow
def test_a_worker_service_serves_csv_and_image_folder_found_by_tag(tmp_path, hook):
    import fedmq
    from worker_procs import AMQP_URL, WorkerProcesses

    frame = make_table(30)
    frame["label"] = np.where(frame["label"] == 0, "healthy", "sick")
    frame.to_csv(tmp_path / "heart.csv", index=False)
    root = make_images(tmp_path / "pets", {"cat": [(10, 14)] * 3, "dog": [(14, 10)] * 2})
    argv = ["--data", str(tmp_path / "heart.csv"), "--key", "heart", "--target", "label",
            "--split", "0.2", "--transform", "normalize", "--tags", "clinic",
            "--data", str(root), "--key", "pets", "--transform", "resize=8,center_crop=8"]
    expected = {tags: tensor for tensor, tags, _ in
                holdings(worker_args(*argv))}  # what the service must hold
    procs = WorkerProcesses(tmp_path)
    try:
        procs.start("files_owner", *argv)
        log = procs.log("files_owner")
        assert "heart: classes 0 healthy, 1 sick" in log and "per label: 0 cat: 3, 1 dog: 2" in log
        owner = fedmq.AMQPClientWorker(hook, id="files_owner", url=AMQP_URL, timeout=60)
        found = owner.search("#heart", "#data", "#test")
        assert len(found) == 1 and found[0].tags == {"#heart", "#data", "#test", "#clinic"}
        assert tuple(found[0].shape) == (6, 3) and "heart test set" in found[0].description
        grid = fedmq.PrivateGridNetwork(owner).search("#pets", "#target")
        assert list(grid) == ["files_owner"] and len(grid["files_owner"]) == 1
        for tags in [("#heart", "#data", "#train", "#clinic"),
                     ("#heart", "#target", "#test", "#clinic"), ("#pets", "#data", "#train")]:
            pointer, = owner.search(*tags[:3])
            assert torch.equal(pointer.get(), expected[tags]), tags
        assert owner.search("#pets", "#test") == []
    finally:
        procs.stop_all(delete_queues=True)


# --- found by review (issue 14) -------------------------------------------------------------

def test_hostile_files_are_one_line_errors(tmp_path, monkeypatch):
    import PIL.Image
    with pytest.raises(SystemExit):  # a reserved tag is no key (argparse: exit 2)
        worker_args("--data", str(tmp_path / "x.csv"), "--key", "train")
    pd.DataFrame({"a": [1.0, float("inf")], "t": [0, 1]}).to_csv(tmp_path / "inf.csv",
                                                                 index=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        holdings(worker_args("--data", str(tmp_path / "inf.csv"), "--key", "k",
                             "--target", "t"))
    np.savez(tmp_path / "nan.npz", x=np.array([[np.nan, 1.0]]), y=np.array([0]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        holdings(worker_args("--data", str(tmp_path / "nan.npz"), "--key", "k"))
    (tmp_path / "empty.csv").write_text("a,t\n")
    with pytest.raises(ValueError, match="no rows"):
        holdings(worker_args("--data", str(tmp_path / "empty.csv"), "--key", "k",
                             "--target", "t"))
    (tmp_path / "wide.csv").write_text(",".join(f"c{i}" for i in range(70_000)) + "\n")
    with pytest.raises(ValueError, match="columns"):
        holdings(worker_args("--data", str(tmp_path / "wide.csv"), "--key", "k",
                             "--target", "c0"))
    loop = make_images(tmp_path / "loop", {"a": [(4, 4)], "b": [(4, 4)]})
    (loop / "a" / "up").symlink_to(loop, target_is_directory=True)
    with pytest.raises(ValueError, match="links to a folder"):
        holdings(worker_args("--data", str(loop), "--key", "k"))
    bomb = make_images(tmp_path / "bomb", {"a": [(40, 40)]})
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels: over twice that
    with pytest.raises(ValueError, match="cannot read image"):
        holdings(worker_args("--data", str(bomb), "--key", "k"))


def test_wide_integer_targets_are_not_counted_per_label(tmp_path, caplog):
    pd.DataFrame({"a": [1.0, 2.0], "t": [0, 999_999_999]}).to_csv(tmp_path / "ids.csv",
                                                                  index=False)
    with caplog.at_level(logging.INFO, logger="fedmq.data"):
        got = held("--data", str(tmp_path / "ids.csv"), "--key", "k", "--target", "t")
    assert any("integer targets from 0 to 999999999" in r.message for r in caplog.records)
    assert sorted(t.tolist() for tags, t in got.items() if "#target" in tags) == \
        [[0, 999_999_999]]


def test_hostile_archives_and_special_files_are_refused(tmp_path):
    """Found by the second review: an npz whose header declares a huge array (compressed
    zeros), uint64 labels beyond int64, a FIFO in an image folder."""
    import io
    import os
    import zipfile
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 20, 4096)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
        buf = io.BytesIO()
        np.save(buf, np.zeros(2))
        z.writestr("y.npy", buf.getvalue())
    with pytest.raises(ValueError, match="declares"):
        holdings(worker_args("--data", str(tmp_path / "bomb.npz"), "--key", "k"))
    np.savez(tmp_path / "u64.npz", x=np.zeros((2, 2)), y=np.array([2 ** 64 - 1] * 2,
                                                                   dtype=np.uint64))
    with pytest.raises(ValueError, match="2\\*\\*63"):
        holdings(worker_args("--data", str(tmp_path / "u64.npz"), "--key", "k"))
    images = make_images(tmp_path / "fifo", {"a": [(4, 4)]})
    os.mkfifo(images / "a" / "x.png")
    with pytest.raises(ValueError, match="not a regular file"):
        holdings(worker_args("--data", str(images), "--key", "k"))
