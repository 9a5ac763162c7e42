"""The plans command: a MedNeXt configuration from the plans and fingerprint (no nnU-Net run needed)."""
import json

import pytest

from mednext_fast.nnunet import plans as mp
from mednext_fast.nnunet.__main__ import main

PLANS = {
    "dataset_name": "Dataset903_Plans", "plans_name": "nnUNetPlans", "transpose_forward": [2, 0, 1],
    "configurations": {
        "2d": {"data_identifier": "nnUNetPlans_2d", "spacing": [0.8, 0.8], "patch_size": [256, 256]},
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "spacing": [2.5, 0.8, 0.8],
                       "patch_size": [56, 160, 192], "batch_size": 2},
    },
}
# Two cases, axes in file order (x, y, z); the plans transpose z first.
FINGERPRINT = {"shapes_after_crop": [[200, 180, 40], [220, 200, 44]],
               "spacings": [[0.8, 0.8, 2.5], [0.8, 0.8, 2.5]]}


@pytest.fixture
def dataset_dir(tmp_path, monkeypatch):
    d = tmp_path / "Dataset903_Plans"
    d.mkdir()
    (d / "nnUNetPlans.json").write_text(json.dumps(PLANS))
    (d / "dataset_fingerprint.json").write_text(json.dumps(FINGERPRINT))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    return d


def test_paper_defaults_resample_to_1mm(dataset_dir, capsys):
    assert main(["plans", "-d", "903"]) == 0
    config = json.loads((dataset_dir / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres_mednext"]
    assert config["inherits_from"] == "3d_fullres"
    assert (config["spacing"], config["patch_size"], config["batch_size"]) == ([1.0, 1.0, 1.0], [128, 128, 128], 2)
    # median of (z, x, y) sizes at 1 mm: z 40*2.5=100 and 44*2.5=110; x 160 and 176; y 144 and 160
    assert config["median_image_size_in_voxels"] == [105.0, 168.0, 152.0]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres_mednext"  # new spacing: preprocess again
    assert config["architecture"]["network_class_name"] == "mednext_fast.MedNeXt"
    assert config["architecture"]["arch_kwargs"]["strides"][1:] == [[2, 2, 2]] * 4
    out = capsys.readouterr().out
    assert "nnUNetv2_preprocess -d Dataset903_Plans -c 3d_fullres_mednext" in out
    assert "nnUNetv2_train Dataset903_Plans 3d_fullres_mednext 0 -tr nnUNetTrainerMedNeXt_B_k3" in out
    assert "exceeds the median image size (axis 0: 128 > 105" in out


def test_median_spacing_reuses_the_preprocessed_data(dataset_dir):
    result = mp.add_configuration(str(dataset_dir), spacing="median", patch=[48, 160, 192], name="mine")
    assert result["config"]["spacing"] == [2.5, 0.8, 0.8]
    assert result["config"]["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert result["config"]["median_image_size_in_voxels"] == [42.0, 210.0, 190.0]


@pytest.mark.parametrize("patch, message", [
    (["56", "160", "192"], "56x160x192, not divisible by 16.*--patch 64 160 192"),
    (["16"], "16x16x16, whose 1/16 bottleneck is one voxel.*at least 32 along one axis"),
])
def test_bad_patch_is_rejected_with_the_fix(dataset_dir, patch, message):
    with pytest.raises(ValueError, match=message):
        mp.mednext_configuration(PLANS, FINGERPRINT, patch=[int(p) for p in patch])
    with pytest.raises(SystemExit, match=message):
        main(["plans", "-d", "903", "--patch", *patch])
    assert "3d_fullres_mednext" not in json.loads((dataset_dir / "nnUNetPlans.json").read_text())["configurations"]


def test_other_mistakes_name_the_fix(dataset_dir):
    with pytest.raises(ValueError, match="2-D; MedNeXt here is 3-D"):
        mp.mednext_configuration(PLANS, FINGERPRINT, source="2d")
    with pytest.raises(ValueError, match="no configuration 'lowres'"):
        mp.mednext_configuration(PLANS, FINGERPRINT, source="lowres")
    main(["plans", "-d", "903", "--spacing", "1.5"])
    with pytest.raises(SystemExit, match="already has a configuration '3d_fullres_mednext'; pass --overwrite"):
        main(["plans", "-d", "903"])
    assert main(["plans", "-d", "903", "--overwrite", "--patch", "96"]) == 0
    with pytest.raises(SystemExit, match="dataset '904' not found.*nnUNetv2_plan_and_preprocess -d 904"):
        main(["plans", "-d", "904"])
