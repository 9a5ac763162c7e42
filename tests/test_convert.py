"""MONAI's MedNeXt is the independent oracle: weights converted either way give MONAI's outputs."""
import pytest
import torch

import mednext_fast as mf

monai_mednext = pytest.importorskip("monai.networks.nets.mednext", reason="monai is a test dependency")

CONFIGS = [(v, k, ds) for v in "SBML" for k in (3, 5) for ds in (False, True)]
X = None


def _input():
    global X
    if X is None:
        X = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    return X


def _pair(variant, kernel, ds):
    theirs = monai_mednext.create_mednext(variant, spatial_dims=3, in_channels=1, out_channels=3,
                                          kernel_size=kernel, deep_supervision=ds)
    ours = mf.create_mednext(variant, 1, 3, kernel_size=kernel, deep_supervision=ds, monai_compat=True,
                             backend="torch")
    # MONAI returns the deep-supervision outputs only in train mode; with eval-mode GroupNorm both are
    # identical, so compare in train mode under no_grad (GroupNorm has no running statistics).
    return theirs.train(ds), ours.train(ds)


def _outputs(model):
    with torch.no_grad():
        out = model(_input())
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _max_diff(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.shape == q.shape
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


@pytest.mark.parametrize("variant,kernel,ds", CONFIGS)
def test_monai_weights_give_monai_outputs(variant, kernel, ds):
    theirs, ours = _pair(variant, kernel, ds)
    ours.load_state_dict(mf.convert_state_dict(theirs.state_dict(), source="monai"), strict=True)
    assert _max_diff(_outputs(theirs), _outputs(ours)) <= 1e-5


@pytest.mark.parametrize("variant,kernel,ds", [c for c in CONFIGS if c[0] in "SL"])
def test_our_weights_load_into_monai(variant, kernel, ds):
    theirs, ours = _pair(variant, kernel, ds)
    converted = mf.convert_state_dict(ours.state_dict(), target="monai")
    assert list(converted) == list(theirs.state_dict())  # same keys in MONAI's order
    theirs.load_state_dict(converted, strict=True)
    assert _max_diff(_outputs(theirs), _outputs(ours)) <= 1e-5


def test_official_layout_round_trip_and_order():
    model = mf.create_mednext("B", 1, 3, deep_supervision=True, monai_compat=True)
    state = model.state_dict()
    back = mf.convert_state_dict(mf.convert_state_dict(state, target="monai"), source="monai")
    assert list(back) == list(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_grn_names_convert():
    model = mf.MedNeXt(1, 4, 2, exp_r=2, kernel_size=3, grn=True, block_counts=[1] * 9)
    monai_keys = mf.convert_state_dict(model.state_dict(), target="monai")
    assert "enc_stages.0.0.global_resp_gamma" in monai_keys
    assert not any("grn_" in k for k in monai_keys)


def test_official_b_weights_do_not_fit_monai_b_shapes():
    official = mf.create_mednext("B", 1, 3)
    theirs = monai_mednext.create_mednext("B", spatial_dims=3, in_channels=1, out_channels=3, kernel_size=3)
    with pytest.raises(RuntimeError, match="down_blocks.0.conv2.weight"):
        theirs.load_state_dict(mf.convert_state_dict(official.state_dict(), target="monai"))


def test_bad_conversion_requests():
    state = mf.create_mednext("S", 1, 2).state_dict()
    with pytest.raises(ValueError, match="already has official"):
        mf.convert_state_dict(state, source="monai")
    with pytest.raises(ValueError, match="already has MONAI"):
        mf.convert_state_dict(mf.convert_state_dict(state, target="monai"), target="monai")
    with pytest.raises(ValueError, match="source='monai'"):
        mf.convert_state_dict(state)
