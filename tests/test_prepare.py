"""Release -> prepared folder -> dataset, on phantoms and on the real NIH sample."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import META, NIH, _need
from cxrkit.data.cache import PreprocessSettings
from cxrkit.data.dataset import META_FEATURES, CXRDataset, make_loader, metadata_vector
from cxrkit.data.images import preprocess, read_xray
from cxrkit.data.prepare import load_prepared, prepare
from cxrkit.data.release import MissingImagesError, load_release, match_images
from cxrkit.labels import FINDINGS


def copy_release(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_prepared_folder_is_complete(phantom_prepared, phantom_release):
    p = phantom_prepared
    for name in (
        "images.npy",
        "index.csv",
        "manifest.json",
        "labels.csv",
        "split.csv",
        "split.json",
        "boxes.csv",
        "dataset.json",
    ):
        assert (p.root / name).exists(), name
    assert len(p.labels) == len(p.cache) == len(p.split)
    assert p.info["label_report"]["form"] == "2017"
    assert set(p.split["split"]) == {"train", "val", "test"}
    test_ids = set((phantom_release / "test_list.txt").read_text().split())
    assert set(p.split.loc[p.split["split"] == "test", "image_id"]) == test_ids
    assert set(p.boxes["image_id"]) <= test_ids
    # the cache holds exactly what decode + preprocess give
    row = p.labels.iloc[3]
    path = next(phantom_release.rglob(row["image_id"]))
    assert np.array_equal(p.cache.image(row["image_id"]), preprocess(read_xray(path), size=64))
    boxes_px = p.boxes_in_pixels()
    assert np.allclose(boxes_px["w"], p.boxes["w"] * 64 / 1024)


def test_missing_images_error_or_drop(phantom_release, tmp_path):
    root = copy_release(phantom_release, tmp_path / "rel")
    gone = sorted(root.rglob("*.png"))[:3]
    for g in gone:
        g.unlink()
    with pytest.raises(
        MissingImagesError, match=r"3 of \d+ label-file images are not on disk.*" + gone[0].name
    ):
        prepare(
            root, tmp_path / "out", settings=PreprocessSettings(size=32), workers=0, progress=False
        )
    with pytest.warns(UserWarning, match="dropped 3"):
        p = prepare(
            root,
            tmp_path / "out",
            settings=PreprocessSettings(size=32),
            workers=0,
            progress=False,
            on_missing="drop",
        )
    dropped = pd.read_csv(tmp_path / "out" / "dropped_images.csv")
    assert sorted(dropped["image_id"]) == sorted(g.name for g in gone)
    assert len(p.labels) == len(pd.read_csv(root / "Data_Entry_2017.csv")) - 3


def test_corrupt_image_is_recorded_not_fatal(phantom_release, tmp_path):
    root = copy_release(phantom_release, tmp_path / "rel")
    bad = sorted(root.rglob("*.png"))[5]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.warns(UserWarning, match=bad.name):
        p = prepare(
            root, tmp_path / "out", settings=PreprocessSettings(size=32), workers=0, progress=False
        )
    assert bad.name not in set(p.labels["image_id"])
    index = pd.read_csv(tmp_path / "out" / "index.csv")
    assert index.loc[index["image_id"] == bad.name, "status"].item() == "error"
    n_labels = len(pd.read_csv(root / "Data_Entry_2017.csv"))
    assert len(p.labels) == n_labels - 1  # nothing else lost
    with pytest.warns(UserWarning, match=bad.name):
        again = load_prepared(tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "labels.csv")
    with pytest.raises(KeyError, match=bad.name):
        CXRDataset(again.cache, table)
    ds = CXRDataset(again.cache, table, drop_uncached=True)
    assert ds.dropped == [bad.name] and len(ds) == n_labels - 1


def test_rerun_is_a_no_op(phantom_release, tmp_path):
    kw = dict(settings=PreprocessSettings(size=32), workers=0, progress=False)
    prepare(phantom_release, tmp_path / "out", **kw)
    before = (tmp_path / "out" / "images.npy").stat().st_mtime_ns
    prepare(phantom_release, tmp_path / "out", **kw)
    assert (tmp_path / "out" / "images.npy").stat().st_mtime_ns == before


def test_release_without_lists_needs_random_split(phantom_release, tmp_path):
    root = copy_release(phantom_release, tmp_path / "rel")
    (root / "test_list.txt").unlink()
    with pytest.warns(UserWarning, match="test_list.txt not found"):
        rel = load_release(root)
    assert not rel.has_official_split
    with pytest.warns(UserWarning):
        with pytest.raises(FileNotFoundError, match="--protocol random"):
            prepare(
                root,
                tmp_path / "out",
                settings=PreprocessSettings(size=32),
                workers=0,
                progress=False,
            )
    with pytest.warns(UserWarning):
        p = prepare(
            root,
            tmp_path / "out2",
            settings=PreprocessSettings(size=32),
            workers=0,
            progress=False,
            protocol="random",
        )
    assert set(p.split["split"]) == {"train", "val", "test"}


def test_match_images_rejects_bad_mode():
    with pytest.raises(ValueError, match="on_missing"):
        match_images(pd.DataFrame({"image_id": []}), {}, on_missing="skip")


@pytest.mark.parametrize("folder,count", [("images_256", 1789), ("originals", 39)])
def test_real_sample_prepares(tmp_path, folder, count):
    """The real images: 256 px set and untouched 1024 px originals (7 of them RGBA)."""
    images = _need(NIH / folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'dropped 110,331 label-file images not on disk'
        p = prepare(
            NIH,
            tmp_path / "out",
            images_root=images,
            label_file=META / "Data_Entry_2017.csv",
            settings=PreprocessSettings(size=64),
            workers=2,
            progress=False,
            on_missing="drop",
        )
    assert len(p.labels) == len(p.cache) == count
    assert p.cache.images.shape == (count, 64, 64) and p.cache.images.dtype == np.uint8
    assert p.info["label_report"]["n_images"] == 112_120
    # split covers the whole label file; the boxes are all in the test split
    assert (p.split["split"] == "test").sum() == 25_596
    tab = p.table()
    boxed = tab[tab["image_id"].isin(p.boxes["image_id"])]
    assert len(boxed) and set(boxed["split"]) == {"test"}
    assert p.cache.images[:].std() > 20  # real radiographs, not blank frames


def test_dataset_items_and_loader(phantom_prepared):
    table = phantom_prepared.table("train")
    ds = CXRDataset(phantom_prepared.cache, table, ("Pneumonia", "Effusion"))
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.uint8
    assert item["labels"].tolist() == table.loc[0, ["Pneumonia", "Effusion"]].tolist()
    assert item["meta"].shape == (len(META_FEATURES),)
    assert torch.equal(
        item["image"][0], torch.from_numpy(phantom_prepared.cache.image(item["image_id"]))
    )
    a = [b["image_id"] for b in make_loader(ds, batch_size=8, shuffle=True, seed=3)]
    b = [b["image_id"] for b in make_loader(ds, batch_size=8, shuffle=True, seed=3)]
    c = [b["image_id"] for b in make_loader(ds, batch_size=8, shuffle=True, seed=4)]
    assert a == b and a != c
    batch = next(iter(make_loader(ds, batch_size=8, shuffle=False)))
    assert batch["image"].shape == (8, 1, 64, 64) and batch["labels"].shape == (8, 2)
    for k in range(8):  # batched read keeps the order of the requested indices
        assert torch.equal(batch["image"][k], ds[k]["image"])


def test_unknown_labels_stay_nan(phantom_prepared):
    table = phantom_prepared.table("train").astype({"Mass": float})
    table.loc[0, "Mass"] = np.nan
    ds = CXRDataset(phantom_prepared.cache, table)
    assert torch.isnan(ds[0]["labels"][FINDINGS.index("Mass")])
    assert not torch.isnan(ds[1]["labels"]).any()


def test_metadata_vector():
    t = pd.DataFrame({"age": [50.0, np.nan], "sex": ["M", "F"], "view": ["AP", "PA"]})
    assert metadata_vector(t).tolist() == [[0.5, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]]


# ---------------------------------------------------------------- full disk, unwritable out


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or ".partial" in p.name)


def test_not_enough_space_is_refused_before_the_memmap(phantom_release, tmp_path, monkeypatch):
    import shutil as sh

    import cxrkit.data._cache_build as build_mod
    from cxrkit.artefacts import WriteError as OutputError

    real = sh.disk_usage
    monkeypatch.setattr(build_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=5000))
    out = tmp_path / "out"
    with pytest.raises(OutputError) as info:
        prepare(
            phantom_release, out, settings=PreprocessSettings(size=32), workers=0, progress=False
        )
    msg = str(info.value)
    n = len(pd.read_csv(phantom_release / "Data_Entry_2017.csv"))
    assert str(out) in msg and f"{n:,} images of 32x32 px" in msg, msg
    assert "5,000 bytes (4.9 KiB) are free" in msg and "\n" not in msg
    assert not (out / "images.npy.partial").exists() and _leftovers(out) == []


def test_full_disk_while_writing_tables_leaves_no_temporaries(
    phantom_release, tmp_path, monkeypatch
):
    import errno

    from cxrkit.artefacts import WriteError as OutputError

    from cxrkit import artefacts

    out = tmp_path / "out"
    real = artefacts.os.replace

    def full(src, dst):  # the temporary is written; the disk fills before it is renamed
        if str(dst).endswith("labels.csv"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real(src, dst)

    monkeypatch.setattr(artefacts.os, "replace", full)
    with pytest.raises(
        OutputError,
        match=r"labels\.csv: no space left on the device .*; the "
        "image cache is complete and kept",
    ):
        prepare(
            phantom_release, out, settings=PreprocessSettings(size=32), workers=0, progress=False
        )
    assert _leftovers(out) == []
    monkeypatch.setattr(artefacts.os, "replace", real)
    # the finished cache is kept: a re-run only writes the tables
    p = prepare(
        phantom_release, out, settings=PreprocessSettings(size=32), workers=0, progress=False
    )
    assert len(p.cache) == len(p.labels)


def test_unwritable_output_is_one_line(phantom_release, tmp_path):
    from cxrkit.artefacts import WriteError as OutputError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=f"cannot write the prepared folder {blocker}/out"):
        prepare(
            phantom_release,
            blocker / "out",
            settings=PreprocessSettings(size=32),
            workers=0,
            progress=False,
        )


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB file system (tmpfs), where mounting is allowed (root in a container)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_prepare_on_a_real_full_disk_cli(phantom_release, tmp_path, tiny_disk):
    from typer.testing import CliRunner

    from cxrkit.cli import app

    out = tiny_disk / "prep"
    r = CliRunner().invoke(
        app, ["prepare", str(phantom_release), "--out", str(out), "--size", "256", "--workers", "0"]
    )
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    line = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and str(out) in line[0] and "bytes" in line[0], r.output
    assert _leftovers(tiny_disk) == []
