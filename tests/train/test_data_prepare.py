"""The prepare command and the Colin27 builder (real data when mricron-data is installed)."""
import json
import os

import numpy as np
import pytest

from mednext_fast.train import colin27, inia19, prepare
from mednext_fast.train import dataset_io as dio


def test_prepare_cli_synthetic_then_cache(tmp_path, capsys):
    args = ["--dataset", "synthetic-ct", "--out", str(tmp_path), "--n-cases", "2", "--patch", "16", "16", "16",
            "--workers", "0", "--quiet"]
    assert prepare.main(args) == 0
    plans = json.load(open(tmp_path / "preprocessed" / "plans.json"))
    assert plans["normalization"] == ["CT"] and plans["patch_size"] == [16, 16, 16] and len(plans["cases"]) == 2
    assert prepare.main(args) == 0
    assert "preprocessed 0, reused 2" in capsys.readouterr().out  # second run: nothing recomputed


def test_prepare_cli_reports_bad_data(tmp_path, capsys):
    assert prepare.main(["--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "not a built-in name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare.main(["--help"])
    assert "nnU-Net v2 raw" in capsys.readouterr().out


def test_colin27_missing_package_says_how_to_install(tmp_path):
    assert not colin27.available(str(tmp_path))
    with pytest.raises(colin27.Colin27Unavailable, match="apt-get install -y mricron-data"):
        colin27.write_dataset(str(tmp_path / "out"), templates=str(tmp_path))


@pytest.mark.skipif(not colin27.available(), reason="Debian package mricron-data not installed")
def test_colin27_dataset(tmp_path):
    t1, label, affine = colin27.build_label()
    counts = np.bincount(label.ravel(), minlength=len(colin27.LABELS))
    assert len(counts) == len(colin27.LABELS) and (counts[1:] > 100_000).all()  # every lobe is sizeable
    root = colin27.write_dataset(str(tmp_path / "raw"))
    assert dio.validate_dataset(root, read_data=False) == ["colin27_L", "colin27_R"]
    meta = dio.load_dataset_json(root)
    left, lab_l, g_l = dio.read_case(root, meta, "colin27_L")
    right, lab_r, g_r = dio.read_case(root, meta, "colin27_R")
    # the halves tile the volume without overlap and keep world coordinates
    assert left.shape[1] + right.shape[1] == t1.shape[0]
    assert np.array_equal(np.concatenate([left[0], right[0]]), t1.astype(np.float32))
    assert np.array_equal(np.concatenate([lab_l, lab_r]), label)
    assert g_r["affine"][0][3] == pytest.approx(affine[0, 3] + left.shape[1])
    splits = json.load(open(os.path.join(root, "splits_final.json")))
    assert all(not set(s["train"]) & set(s["val"]) for s in splits)


@pytest.mark.skipif(not colin27.available(), reason="Debian package mricron-data not installed")
def test_colin27_brain_extraction_datasets(tmp_path):
    t1, label, _ = colin27.build_label()
    root = colin27.write_brain_dataset(str(tmp_path / "halves"))
    meta = dio.load_dataset_json(root)
    assert meta["labels"] == {"background": 0, "brain": 1}
    assert dio.validate_dataset(root, read_data=False) == ["colin27_L", "colin27_R"]
    halves = [dio.read_case(root, meta, case)[1] for case in ("colin27_L", "colin27_R")]
    assert np.array_equal(np.concatenate(halves), (label > 0).astype(halves[0].dtype))  # the lobes' brain mask
    assert os.path.isfile(os.path.join(root, "splits_final.json"))
    head = colin27.write_brain_dataset(str(tmp_path / "head"), whole_head=True)
    assert dio.validate_dataset(head, read_data=False) == ["colin27"]
    image, brain, _ = dio.read_case(head, dio.load_dataset_json(head), "colin27")
    assert image.shape[1:] == t1.shape and np.array_equal(brain > 0, label > 0)
    assert not os.path.isfile(os.path.join(head, "splits_final.json"))  # one case: trained as fold 'all'


@pytest.mark.skipif(not inia19.available(), reason="Debian package mricron-data not installed")
def test_inia19_test_case_at_human_scale(tmp_path):
    images, label = inia19.write_test_case(str(tmp_path / "human"))
    image, affine, spacing = dio.read_volume(os.path.join(images, "inia19_0000.nii.gz"))
    mask, mask_affine, _ = dio.read_volume(label)
    assert list(spacing) == [1.0, 1.0, 1.0] and np.allclose(affine, mask_affine)
    assert np.array_equal(mask > 0, image > 0) and 0.1 < (mask > 0).mean() < 0.3
    _, _, true_spacing = dio.read_volume(inia19.write_test_case(str(tmp_path / "true"), human_scale=False)[0]
                                         + "/inia19_0000.nii.gz")
    assert list(true_spacing) == [0.5, 0.5, 0.5]
