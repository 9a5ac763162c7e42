"""Dataset reading: every bad input raises DatasetError naming the case and file; MSD import."""
import gzip
import json
import os

import numpy as np
import pytest

from mednext_fast.atomic import write_json
from mednext_fast.train import dataset_io as dio
from mednext_fast.train import preprocess as pp

SHAPE = (10, 9, 8)


def _good(root, n_cases=2, n_ch=1):
    rng = np.random.default_rng(0)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    for i in range(n_cases):
        for c in range(n_ch):
            dio.write_volume(rng.normal(100, 10, SHAPE).astype(np.float32), aff,
                             os.path.join(root, "imagesTr", f"case{i}_{c:04d}.nii.gz"))
        lab = np.zeros(SHAPE, np.uint8)
        lab[2:6, 2:6, 2:5] = 1
        dio.write_volume(lab, aff, os.path.join(root, "labelsTr", f"case{i}.nii.gz"))
    write_json(os.path.join(root, "dataset.json"), dict(channel_names={str(c): f"MR{c}" for c in range(n_ch)},
                                                        labels={"background": 0, "x": 1}, numTraining=n_cases,
                                                        file_ending=".nii.gz"))
    return root


def _img(root, case="case1", c=0):
    return os.path.join(root, "imagesTr", f"{case}_{c:04d}.nii.gz")


def _lab(root, case="case1"):
    return os.path.join(root, "labelsTr", f"{case}.nii.gz")


def _edit_json(root, **changes):
    path = os.path.join(root, "dataset.json")
    meta = json.load(open(path))
    meta.update(changes)
    for k, v in list(changes.items()):
        if v is None:
            del meta[k]
    json.dump(meta, open(path, "w"))


def _missing_image(root):
    os.remove(_img(root))
    return "case case1", "case1_0000"


def _image_without_label(root):
    os.remove(_lab(root))
    _edit_json(root, numTraining=1)
    return "case1", "labelsTr"


def _badly_named_file(root):
    open(os.path.join(root, "imagesTr", "case1.nii.gz"), "wb").close()
    return "case1.nii.gz", "named"


def _extra_channel(root):
    dio.write_volume(np.ones(SHAPE, np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), _img(root, c=1))
    return "case case1", "channel count"


def _four_d_image(root):
    dio.write_volume(np.ones(SHAPE + (2,), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), _img(root))
    return "case case1", "channel count"


def _shape_mismatch(root):
    dio.write_volume(np.zeros((10, 9, 7), np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]), _lab(root))
    return "case case1", "shape"


def _affine_mismatch(root):
    lab = np.zeros(SHAPE, np.uint8)
    dio.write_volume(lab, np.diag([1.0, 1.0, 3.0, 1.0]), _lab(root))
    return "case case1", "affine"


def _undeclared_label(root):
    lab = np.zeros(SHAPE, np.uint8)
    lab[1, 1, 1] = 7
    dio.write_volume(lab, np.diag([1.0, 1.0, 2.0, 1.0]), _lab(root))
    return "case case1", "[7] not declared"


def _nan_image(root):
    img = np.ones(SHAPE, np.float32)
    img[3, 3, 3] = np.nan
    img[4, 4, 4] = np.inf
    dio.write_volume(img, np.diag([1.0, 1.0, 2.0, 1.0]), _img(root))
    return "case case1", "1 NaN and 1 inf"


def _truncated_gz(root):
    data = open(_img(root), "rb").read()
    open(_img(root), "wb").write(data[: len(data) // 2])
    return "case case1", "truncated"


def _garbage_file(root):
    open(_lab(root), "wb").write(gzip.compress(b"this is not a nifti file" * 20))
    return "case case1", "corrupt"


def _num_training(root):
    _edit_json(root, numTraining=5)
    return "numTraining", "2 case"


def _missing_key(root):
    _edit_json(root, file_ending=None)
    return "dataset.json", "file_ending"


def _non_consecutive_labels(root):
    _edit_json(root, labels={"background": 0, "x": 2})
    return "dataset.json", "consecutive"


BREAKERS = [_missing_image, _image_without_label, _badly_named_file, _extra_channel, _four_d_image, _shape_mismatch,
            _affine_mismatch, _undeclared_label, _nan_image, _truncated_gz, _garbage_file, _num_training, _missing_key,
            _non_consecutive_labels]


def test_good_dataset_validates(tmp_path):
    root = _good(str(tmp_path / "raw"))
    assert dio.validate_dataset(root) == ["case0", "case1"]
    image, label, geom = dio.read_case(root, dio.load_dataset_json(root), "case1")
    assert image.shape == (1,) + SHAPE and label.dtype == np.int16 and geom["spacing"] == [1.0, 1.0, 2.0]


@pytest.mark.parametrize("breaker", BREAKERS, ids=[b.__name__.strip("_") for b in BREAKERS])
def test_bad_input_raises_clear_error(tmp_path, breaker):
    root = _good(str(tmp_path / "raw"))
    where, what = breaker(root)
    with pytest.raises(dio.DatasetError) as err:
        dio.validate_dataset(root)
    msg = str(err.value)
    assert where in msg and what in msg, msg
    # the preprocessing entry point refuses too, before writing any case
    out = str(tmp_path / "pp")
    with pytest.raises(dio.DatasetError):
        pp.prepare_dataset(root, out, workers=0, progress=False)
    assert not os.path.exists(os.path.join(out, "data")) and not os.path.exists(os.path.join(out, "plans.json"))


def test_msd_import(tmp_path):
    msd = tmp_path / "Task05_Prostate"
    rng = np.random.default_rng(1)
    aff = np.diag([0.6, 0.6, 3.6, 1.0])
    training = []
    for i in range(2):
        dio.write_volume(rng.normal(0, 1, SHAPE + (2,)).astype(np.float32), aff,
                         str(msd / "imagesTr" / f"prostate_{i:02d}.nii.gz"))
        lab = rng.integers(0, 3, SHAPE).astype(np.uint8)
        dio.write_volume(lab, aff, str(msd / "labelsTr" / f"prostate_{i:02d}.nii.gz"))
        training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz",
                         "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
    json.dump(dict(name="Prostate", modality={"0": "T2", "1": "ADC"}, labels={"0": "background", "1": "PZ", "2": "TZ"},
                   numTraining=2, numTest=0, training=training, test=[], tensorImageSize="4D"),
              open(msd / "dataset.json", "w"))
    with pytest.raises(dio.DatasetError, match="MSD"):
        dio.load_dataset_json(str(msd))
    out = dio.import_msd(str(msd), str(tmp_path / "Dataset005_Prostate"))
    meta = dio.load_dataset_json(out)
    assert meta["channel_names"] == {"0": "T2", "1": "ADC"} and meta["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert dio.validate_dataset(out) == ["prostate_00", "prostate_01"]
    image, _, geom = dio.read_case(out, meta, "prostate_01")
    src = np.asarray(__import__("nibabel").load(str(msd / "imagesTr" / "prostate_01.nii.gz")).dataobj)
    assert np.array_equal(image[1], src[..., 1]) and geom["spacing"] == pytest.approx([0.6, 0.6, 3.6])
    # a 3-channel 4-D file where modality lists 2 is refused
    dio.write_volume(np.zeros(SHAPE + (3,), np.float32), aff, str(msd / "imagesTr" / "prostate_01.nii.gz"))
    with pytest.raises(dio.DatasetError, match="prostate_01.*channel count"):
        dio.import_msd(str(msd), str(tmp_path / "again"))
