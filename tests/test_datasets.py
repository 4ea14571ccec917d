"""Real data-set formats, the validation split, the cache, errors, and the two loader paths."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from scipy.io import loadmat, savemat
from scipy.stats import binomtest, chi2_contingency

from sdexp import runs, train
from sdexp.config import compose_config
from sdexp.data import DatasetError, ImageSplits, Split, build_data, build_loaders, sources
from sdexp.data import cache as cache_module
from sdexp.data.loader import PAD
from tests.conftest import ROOT, TINY
from tests.data_formats import write_cifar, write_image_folder, write_svhn


def data_cfg(name: str, root: Path, cache: Path, *extra: str):
    return compose_config(
        [f"dataset={name}", f"dataset.root={root}", f"dataset.cache_dir={cache}", *extra]
    ).dataset


def index_of(images: torch.Tensor) -> torch.Tensor:
    """The index each fixture image encodes (see tests.data_formats.pattern)."""
    return images[:, 0, 16, 16].long()


def test_cifar10_format_and_paper_split(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=20, n_test=30)
    data = build_data(data_cfg("cifar10", tmp_path / "data", tmp_path / "cache", "dataset.val_size=10"))
    assert data.classes == tuple(f"class{i}" for i in range(10))
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 30)
    assert data.train.images.shape == (90, 3, 32, 32) and data.train.images.dtype == torch.uint8
    # Train and val partition the 100 training images; labels stay with their images.
    pool = torch.cat([index_of(data.train.images), index_of(data.val.images)])
    assert sorted(pool.tolist()) == list(range(100))
    assert torch.equal(data.train.labels, index_of(data.train.images) % 10)
    assert index_of(data.test.images).tolist() == list(range(100, 130))
    assert (data.train.images[:, 1, 0, 5] == 255).all()  # rows and columns not swapped


def test_validation_split_is_fixed_by_split_seed(tmp_path: Path) -> None:
    # build_data sees only the dataset config, so the training seed cannot change the split.
    write_cifar(tmp_path / "data", "cifar10", per_batch=20, n_test=5)
    args = (tmp_path / "data", tmp_path / "cache", "dataset.val_size=10")
    val = index_of(build_data(data_cfg("cifar10", *args)).val.images)
    again = index_of(build_data(data_cfg("cifar10", *args)).val.images)  # now from the cache
    other = index_of(build_data(data_cfg("cifar10", *args, "dataset.split_seed=1")).val.images)
    assert torch.equal(val, again)
    assert not torch.equal(val, other)


def test_cifar100_format(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar100", per_batch=200, n_test=50)
    data = build_data(data_cfg("cifar100", tmp_path / "data", tmp_path / "cache", "dataset.val_size=20"))
    assert len(data.classes) == 100 and data.classes[3] == "fine3"
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 50)
    assert torch.equal(data.test.labels, index_of(data.test.images) % 100)


def test_svhn_format_with_extra(tmp_path: Path) -> None:
    write_svhn(tmp_path / "data", {"train": 30, "test": 20, "extra": 50})
    data = build_data(data_cfg("svhn", tmp_path / "data", tmp_path / "cache", "dataset.val_size=6"))
    assert data.classes == tuple(str(d) for d in range(10))
    assert (len(data.train), len(data.val), len(data.test)) == (74, 6, 20)  # train + extra - val
    everything = torch.cat([data.train.images, data.val.images])
    assert sorted(index_of(everything).tolist()) == [*range(30), *range(50, 100)]
    assert torch.equal(data.train.labels, index_of(data.train.images) % 10)  # label 10 is digit 0
    assert (everything[:, 1, 0, 5] == 255).all()
    without = build_data(
        data_cfg("svhn", tmp_path / "data", tmp_path / "cache", "dataset.val_size=6", "dataset.extra=false")
    )
    assert len(without.train) == 24


def test_cinic10_uses_its_own_valid_split(tmp_path: Path) -> None:
    classes = ("airplane", "cat", "truck")
    write_image_folder(tmp_path / "cinic", {"train": 4, "valid": 2, "test": 3}, classes)
    data = build_data(data_cfg("cinic10", tmp_path / "cinic", tmp_path / "cache"))
    assert data.classes == classes
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 9)
    assert sorted(index_of(data.val.images).tolist()) == list(range(12, 18))
    assert torch.equal(data.train.labels, index_of(data.train.images) // 4)


def test_extra_is_said_to_be_unused_outside_svhn(caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config([*TINY, "dataset.extra=true"]).dataset  # synthetic: a run made so still resumes
    assert len(build_data(cfg).train) == cfg.train_size
    assert "dataset.extra=true is not used: it adds SVHN's extra split, and synthetic has none" in caplog.text


def test_image_folder_without_val_or_test(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_image_folder(tmp_path / "tree", {"train": 10}, ("a", "b"), suffix="jpg")
    data = build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=4"))
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 0)
    assert "no test split" in caplog.text
    sizes = ("dataset.val_size=4", "dataset.train_size=20")
    more = build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", *sizes))
    assert len(more.train) == 16
    assert "dataset.train_size=20 but the split has 16 images: using all of them" in caplog.text


def test_hidden_folders_are_not_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tree", {"train": 4}, ("a", "b"))
    (tmp_path / "tree" / "train" / ".ipynb_checkpoints").mkdir()  # empty: ImageFolder would refuse it
    hidden = tmp_path / "tree" / "train" / ".trash" / "x"
    hidden.mkdir(parents=True)
    (hidden / "0.png").write_bytes((tmp_path / "tree" / "train" / "a" / "0000.png").read_bytes())
    data = build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=2"))
    assert data.classes == ("a", "b") and len(data.train) + len(data.val) == 8


def test_a_linked_class_folder_is_read_and_watched_by_the_cache(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tree", {"train": 2}, ("a",))
    write_image_folder(tmp_path / "elsewhere", {"train": 2}, ("b",))
    (tmp_path / "tree" / "train" / "b").symlink_to(tmp_path / "elsewhere" / "train" / "b")
    cfg = data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=1")
    assert build_data(cfg).classes == ("a", "b")
    (first,) = (tmp_path / "cache").glob("*.pt")
    image = tmp_path / "elsewhere" / "train" / "b" / "0000.png"
    os.utime(image, ns=(first.stat().st_mtime_ns + 10**9,) * 2)  # a changed image behind the link
    build_data(cfg)
    assert [p.name for p in (tmp_path / "cache").glob("*.pt")] != [first.name]  # rebuilt


def test_one_class_is_refused_also_from_a_cache_made_before_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image_folder(tmp_path / "tree", {"train": 4}, ("a",))
    cfg = data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=2")
    with pytest.raises(DatasetError, match="has 1 class \\(a\\): classifying needs at least two"):
        build_data(cfg)
    assert not list((tmp_path / "cache").glob("*.pt"))  # refused before decoding
    with monkeypatch.context() as old_version:
        old_version.setattr(sources, "check_classes", lambda *args: None)
        build_data(cfg)  # decoded and cached, as before the check
    assert list((tmp_path / "cache").glob("*.pt"))
    with pytest.raises(DatasetError, match="has 1 class"):
        build_data(cfg)


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tree", {"train": 3, "test": 1}, ("a", "b"))
    cfg = data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=2")
    build_data(cfg)
    (first,) = (tmp_path / "cache").glob("*.pt")
    stamp = first.stat().st_mtime_ns
    build_data(cfg)
    assert [p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.pt")] == [stamp]  # reused
    image = tmp_path / "tree" / "train" / "a" / "0000.png"
    image.write_bytes(image.read_bytes())  # same content, new mtime: counts as changed
    os.utime(image, ns=(stamp + 10**9, stamp + 10**9))
    build_data(cfg)
    (second,) = (tmp_path / "cache").glob("*.pt")
    assert second != first  # rebuilt, and the stale file removed


@pytest.mark.parametrize(
    "damage",
    [
        lambda state: state["splits"].pop("train"),
        lambda state: state.pop("classes"),
        lambda state: state["splits"].update(test=(torch.zeros(1, 3, 32, 32), torch.zeros(1).long())),
        lambda state: state["splits"].update(test=(torch.zeros(1, 3, 32, 32, dtype=torch.uint8),)),
        lambda state: state["splits"]["train"][1].fill_(7),  # a label with no class
        lambda state: state.clear(),
    ],
    ids=["no train split", "no classes", "float images", "no labels", "label out of range", "empty"],
)
def test_a_cache_file_without_the_layout_it_is_written_with_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[dict], object]
) -> None:
    write_image_folder(tmp_path / "tree", {"train": 3, "test": 1}, ("a", "b"))
    cfg = data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=2")
    expected = build_data(cfg)
    (cache,) = (tmp_path / "cache").glob("*.pt")
    state = torch.load(cache, weights_only=True)
    damage(state)
    torch.save(state, cache)
    data = build_data(cfg)
    assert "ignoring unreadable cache" in caplog.text
    assert torch.equal(data.train.images, expected.train.images) and data.classes == expected.classes
    caplog.clear()
    build_data(cfg)
    assert "unreadable" not in caplog.text  # the rebuilt cache replaced the damaged one


def test_a_cache_folder_that_is_a_file_is_only_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_image_folder(tmp_path / "tree", {"train": 2}, ("a", "b"))
    (tmp_path / "cache").write_text("not a folder")
    data = build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=1"))
    assert len(data.train) == 3 and "going on without a cache" in caplog.text


def test_a_killed_writers_cache_temp_file_is_removed_once_stale(tmp_path: Path) -> None:
    """A cache's temp file left by a writer stopped mid-write goes when the cache is next read, unless
    it is recent enough to be one another run is writing."""
    write_image_folder(tmp_path / "tree", {"train": 2}, ("a", "b"))
    cfg = data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=1")
    build_data(cfg)
    (cache,) = (tmp_path / "cache").glob("*.pt")
    old, new = (tmp_path / "cache" / f".{cache.name}.{tag}.tmp" for tag in ("old", "new"))
    old.write_bytes(b"x" * 100)
    new.write_bytes(b"x" * 100)
    os.utime(old, (time.time() - cache_module.STALE_TEMP_S - 60,) * 2)
    build_data(cfg)  # from the cache
    assert not old.exists() and new.exists()


@pytest.mark.parametrize(("target", "above"), [("..", "train"), (".", "train/a")])
def test_a_link_loop_in_an_image_folder_is_named(tmp_path: Path, target: str, above: str) -> None:
    write_image_folder(tmp_path / "tree", {"train": 2}, ("a", "b"))
    (tmp_path / "tree" / "train" / "a" / "loop").symlink_to(target)
    with pytest.raises(DatasetError) as info:
        build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=1"))
    assert str(info.value) == (
        f"{tmp_path / 'tree' / 'train' / 'a' / 'loop'} is a link to {tmp_path / 'tree' / above}, which holds "
        "it: remove the link"
    )


@pytest.mark.parametrize("bad", ["link", "name", "fifo"])
def test_a_file_that_cannot_be_listed_is_named(tmp_path: Path, bad: str) -> None:
    """A link to nothing, a name in another encoding than UTF-8 (an archive made elsewhere), or a FIFO
    with an image's name (reading it would wait for ever)."""
    write_image_folder(tmp_path / "tree", {"train": 2}, ("a", "b"))
    folder = tmp_path / "tree" / "train" / "a"
    if bad == "link":
        (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
        says = f"cannot read {folder / 'gone.png'} (No such file or directory) (a link to nothing?)"
    elif bad == "fifo":
        os.mkfifo(folder / "notes.fifo")  # not read: no image's name
        os.mkfifo(folder / "pipe.jpg")
        says = f"{folder / 'pipe.jpg'} is not a regular file (a FIFO, socket or device?): remove it"
    else:
        shutil.copy(folder / "0000.png", os.fsdecode(bytes(folder / "c") + b"\xff.png"))
        says = "c\\udcff.png': its name is not UTF-8 text; rename it"
    with pytest.raises(DatasetError) as info:
        build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=1"))
    assert says in str(info.value)


def test_a_partial_cifar_copy_names_what_it_lacks(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=5, n_test=5)
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py lacks data_batch_3; copy the whole folder"):
        build_data(data_cfg("cifar10", tmp_path / "data", tmp_path / "cache", "dataset.val_size=2"))


def test_a_split_with_other_classes_names_them(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tree", {"train": 1}, ("a", "b", "c"))
    write_image_folder(tmp_path / "tree", {"test": 1}, ("a", "b", "d"))
    with pytest.raises(DatasetError) as info:
        build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=1"))
    assert str(info.value) == (
        f"dataset imagefolder: {tmp_path / 'tree' / 'test'} lacks c; has d, which train/ has not: every "
        "split needs the class folders of train/"
    )


def test_decoding_says_how_far_it_got_without_a_terminal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SLURM log gets no progress bar: it gets a line per tenth of the images instead."""
    write_image_folder(tmp_path / "tree", {"train": 10}, ("a", "b"))
    with caplog.at_level("INFO"):
        build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=1"))
    said = [r.getMessage() for r in caplog.records if "decoded" in r.getMessage()]
    assert said == [f"data: decoded {n} of 20 train images" for n in range(2, 21, 2)]


def test_missing_root_names_the_path_and_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        build_data(data_cfg("cifar10", tmp_path / "nowhere", tmp_path / "cache"))
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "dataset.root=" in message and "dataset.download=true" in message


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=5, n_test=5)
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:50])
    with pytest.raises(DatasetError, match=str(batch)):
        build_data(data_cfg("cifar10", tmp_path / "data", tmp_path / "cache", "dataset.val_size=2"))


def test_an_image_too_large_to_decode_safely_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PIL refuses an image of more than twice its pixel limit (a decompression bomb): named, with
    what to do, not called corrupt."""
    write_image_folder(tmp_path / "tree", {"train": 2}, ("a", "b"))
    monkeypatch.setattr(sources.Image, "MAX_IMAGE_PIXELS", 100)  # the 32×32 images are over twice this
    with pytest.raises(DatasetError, match=r"decompression bomb.*\); shrink it \(it is resized to 32×32\)$"):
        build_data(data_cfg("imagefolder", tmp_path / "tree", tmp_path / "cache", "dataset.val_size=1"))


def test_a_failed_download_leaves_no_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder the download made is removed, so that the next run does not find an empty data set
    there; a folder that was there is kept."""

    def offline(root: Path, download: bool) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does before it fetches
        raise RuntimeError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", offline)
    for root, kept in ((tmp_path / "new", False), (tmp_path, True)):
        with pytest.raises(DatasetError, match=f"download into {root} failed \\(network unreachable\\)"):
            sources.download("cifar10", root)
        assert root.exists() == kept


def _edit_pickle(path: Path, edit: Callable[[dict], object]) -> None:
    path.write_bytes(pickle.dumps(edit(pickle.loads(path.read_bytes())), protocol=2))


def _edit_mat(path: Path, edit: Callable[[dict], dict]) -> None:
    mat = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    savemat(path, edit(mat))


@pytest.mark.parametrize(
    ("name", "file", "edit", "says"),
    [
        ("cifar10", "data_batch_2", lambda b: {**b, "labels": b["labels"][:3]}, "5 images and 3 labels"),
        ("cifar10", "data_batch_2", lambda b: {**b, "data": b["data"] / 255}, "images are float64 5×3×32×32"),
        (
            "cifar10",
            "test_batch",
            lambda b: {**b, "labels": [-1] * 5},
            "labels run from -1 to -1, not 0 to 9",
        ),
        (
            "cifar10",
            "batches.meta",
            lambda m: {"label_names": ["a", "b", "c"]},
            "from 0 to 4, not 0 to 2 (batches.meta names 3 classes)",
        ),
        ("cifar10", "data_batch_1", lambda b: list(b), "not a cifar10 batch: it needs a dict with 'data'"),
        (
            "cifar10",
            "data_batch_1",
            lambda b: {**b, "data": b["data"][:, :100]},
            "its data is 5×100, not N×3072",
        ),
        (
            "cifar100",
            "meta",
            lambda m: {"label_names": m["fine_label_names"]},
            "it needs a dict with the list",
        ),
    ],
)
def test_a_cifar_file_of_another_shape_is_named(
    tmp_path: Path, name: str, file: str, edit: Callable, says: str
) -> None:
    """Labels that do not pair with the images (fewer of them, out of range) would train on wrong
    labels or fail in the loss: each such file is refused, named, before training."""
    write_cifar(tmp_path / "data", name, per_batch=5, n_test=5)
    folder = tmp_path / "data" / sources.CIFAR[name][0]
    _edit_pickle(folder / file, edit)
    path = folder / ("data_batch_1" if file == "batches.meta" else file)  # its labels do not fit
    with pytest.raises(DatasetError, match=re.escape(f"cannot read {path} (ValueError: ")) as info:
        build_data(data_cfg(name, tmp_path / "data", tmp_path / "cache", "dataset.val_size=2"))
    assert says in str(info.value)


SVHN = ("dataset.val_size=2", "dataset.extra=false")


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: {"y": m["y"]}, "not an SVHN file: it needs X"),
        (lambda m: {**m, "y": m["y"][:4]}, "6 images and 4 labels"),
        (lambda m: {**m, "y": m["y"] + 5}, "labels run from 6 to 15, not 1 to 10"),
        (lambda m: {**m, "X": m["X"][:28]}, "its X is 28×32×3×6, not 32×32×3×N"),
    ],
)
def test_an_svhn_file_of_another_shape_is_named(tmp_path: Path, edit: Callable, says: str) -> None:
    write_svhn(tmp_path / "svhn", {"train": 6, "test": 6})
    path = tmp_path / "svhn" / "train_32x32.mat"
    _edit_mat(path, edit)
    with pytest.raises(DatasetError, match=re.escape(f"cannot read {path} (ValueError: ")) as info:
        build_data(data_cfg("svhn", tmp_path / "svhn", tmp_path / "cache", *SVHN))
    assert says in str(info.value)


def test_svhn_labels_stored_as_floats_are_read(tmp_path: Path) -> None:
    """MATLAB stores numbers as doubles by default: whole-number labels 1.0 to 10.0 are labels."""
    write_svhn(tmp_path / "svhn", {"train": 6, "test": 6})
    _edit_mat(tmp_path / "svhn" / "train_32x32.mat", lambda m: {**m, "y": m["y"].astype(float)})
    data = build_data(data_cfg("svhn", tmp_path / "svhn", tmp_path / "cache", *SVHN))
    assert sorted(data.train.labels.tolist() + data.val.labels.tolist()) == [0, 1, 2, 3, 4, 5]


@pytest.mark.slow
def test_run_py_missing_data_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            *TINY,
            "dataset=cifar10",
            f"dataset.root={tmp_path / 'none'}",
            f"dataset.cache_dir={tmp_path / 'cache'}",
            "hydra.run.dir=out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: dataset cifar10: nothing found at")
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.slow
def test_run_py_trains_on_an_image_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tree", {"train": 20, "test": 5}, ("a", "b", "c"))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            *TINY,
            "dataset=imagefolder",
            f"dataset.root={tmp_path / 'tree'}",
            f"dataset.cache_dir={tmp_path / 'cache'}",
            "dataset.val_size=6",
            "hydra.run.dir=out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = runs.read_result(tmp_path / "out")
    assert result["status"] == "completed" and result["dataset"] == "imagefolder"


def _positions(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flipped) of augmented position images (channel 0 = row + 1, channel 1 = col + 1)."""
    row, col = batch[:, 0, 16, 16].round().long() - 1, batch[:, 1, 16, 16].round().long() - 1
    flipped = batch[:, 1, 16, 17] < batch[:, 1, 16, 16]
    return row - 16, torch.where(flipped, col - 15, col - 16), flipped


def test_fast_and_torch_loaders_agree_statistically() -> None:
    n = 4096
    rows = torch.arange(1, 33).view(32, 1).expand(32, 32)
    cols = torch.arange(1, 33).view(1, 32).expand(32, 32)
    image = torch.stack([rows, cols, torch.zeros(32, 32, dtype=torch.long)]).to(torch.uint8)
    images, labels = image.expand(n, 3, 32, 32).clone(), torch.arange(n) % 10
    split = Split(images, labels)
    data = ImageSplits(split, split, split, tuple(map(str, range(10))))
    stats = {}
    for kind in ("fast", "torch"):
        cfg = compose_config(
            [
                "dataset=synthetic",
                f"dataset.loader={kind}",
                "dataset.num_workers=0",
                "dataset.mean=[0,0,0]",
                f"dataset.std=[{1 / 255},{1 / 255},{1 / 255}]",
            ]
        ).dataset
        loader = build_loaders(data, cfg, 256, 256, torch.device("cpu"), 0)["train"]
        xs, ys = zip(*loader, strict=True)
        batch, epoch_labels = torch.cat(xs), torch.cat(ys)
        assert torch.equal(epoch_labels.bincount(), labels.bincount())  # each image once per epoch
        stats[kind] = _positions(batch)
    for kind, (dy, dx, flipped) in stats.items():
        assert dy.abs().max() <= PAD and dx.abs().max() <= PAD, kind
        assert binomtest(int(flipped.sum()), n, 0.5).pvalue > 1e-3, kind
    for i in (0, 1):  # same shift distributions: chi-square test of homogeneity
        table = [torch.bincount(stats[k][i] + PAD, minlength=2 * PAD + 1).tolist() for k in stats]
        assert chi2_contingency(table).pvalue > 1e-3


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "cinic10"])
def test_every_format_trains(tmp_path: Path, name: str) -> None:
    root = tmp_path / "data"
    if name.startswith("cifar"):
        write_cifar(root, name, per_batch=40 if name == "cifar10" else 200, n_test=40)
    elif name == "svhn":
        write_svhn(root, {"train": 100, "test": 40, "extra": 100})
    else:
        write_image_folder(root, {"train": 20, "valid": 4, "test": 4}, ("a", "b", "c"))
    overrides = [*TINY, f"dataset={name}", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}",
                 "dataset.val_size=20", "trainer.epochs=1"]  # fmt: skip
    result = train.run(compose_config(overrides), tmp_path / "run")
    assert result["status"] == "completed" and result["dataset"] == name
    assert 0 <= result["test_error"] <= 100
