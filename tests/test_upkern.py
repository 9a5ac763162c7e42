"""UpKern: resized kernels equal trilinear interpolation of the source, everything else is copied."""
import pytest
import torch
import torch.nn.functional as F

import mednext_fast as mf
from tests.conftest import tiny_mednext


@pytest.mark.parametrize("small,large", [(3, 5), (3, 7), (5, 7)])
def test_upkern_resizes_depthwise_kernels_and_copies_the_rest(small, large):
    source = mf.create_mednext("S", 1, 4, kernel_size=small, deep_supervision=True)
    target = mf.create_mednext("S", 1, 4, kernel_size=large, deep_supervision=True)
    mf.upkern(target, source)
    src, dst = source.state_dict(), target.state_dict()
    resized = 0
    for key, value in dst.items():
        if key.endswith("conv1.weight"):
            expected = F.interpolate(src[key], size=(large,) * 3, mode="trilinear", align_corners=False)
            torch.testing.assert_close(value, expected, rtol=0, atol=0)
            resized += 1
        else:
            assert torch.equal(value, src[key]), key
    assert resized == 18 + 8  # 18 stage blocks and 8 resampling blocks


def test_upkern_k3_to_k5_keeps_centre_and_corner_taps():
    source, target = tiny_mednext(kernel_size=3), tiny_mednext(kernel_size=5)
    mf.upkern(target, source)
    w3, w5 = source.enc_block_0[0].conv1.weight, target.enc_block_0[0].conv1.weight
    torch.testing.assert_close(w5[..., 2, 2, 2], w3[..., 1, 1, 1])
    torch.testing.assert_close(w5[..., 0, 0, 0], w3[..., 0, 0, 0])
    torch.testing.assert_close(w5[..., 4, 4, 4], w3[..., 2, 2, 2])


def test_upkern_2d_uses_bilinear():
    source, target = tiny_mednext(kernel_size=3, dim="2d"), tiny_mednext(kernel_size=5, dim="2d")
    mf.upkern(target, source)
    expected = F.interpolate(source.up_0.conv1.weight, size=(5, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(target.up_0.conv1.weight, expected, rtol=0, atol=0)


def test_upkern_from_nnunet_style_checkpoint_file(tmp_path):
    source, target = tiny_mednext(kernel_size=3), tiny_mednext(kernel_size=7)
    path = tmp_path / "model_final_checkpoint.model"
    # nnU-Net v1 layout: weights under 'state_dict', saved from a DataParallel-wrapped net.
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    mf.upkern(target, path)
    torch.testing.assert_close(target.stem.weight, source.stem.weight, rtol=0, atol=0)
    assert target.enc_block_0[0].conv1.weight.shape[-1] == 7


def test_upkern_from_monai_state_dict():
    monai_mednext = pytest.importorskip("monai.networks.nets.mednext")
    theirs = monai_mednext.create_mednext("S", spatial_dims=3, in_channels=1, out_channels=2, kernel_size=3)
    target = mf.create_mednext("S", 1, 2, kernel_size=5)
    mf.upkern(target, theirs.state_dict())
    torch.testing.assert_close(target.up_3.res_conv.weight, theirs.up_blocks[0].res_conv.weight, rtol=0, atol=0)


def test_upkern_rejects_channel_mismatch():
    expected = r"stem.weight has shape \(4, 1, 1, 1, 1\) in the source but \(8, 1, 1, 1, 1\)"
    with pytest.raises(ValueError, match=expected):
        mf.upkern(tiny_mednext(n_channels=8, kernel_size=5), tiny_mednext(kernel_size=3))


def test_upkern_rejects_missing_keys():
    with pytest.raises(KeyError, match="out_1.conv_out.weight"):
        mf.upkern(tiny_mednext(kernel_size=5, deep_supervision=True), tiny_mednext(kernel_size=3))


def test_upkern_rejects_bad_sources(tmp_path):
    with pytest.raises(TypeError, match="model, a state_dict or a checkpoint path"):
        mf.upkern(tiny_mednext(), 3)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        mf.upkern(tiny_mednext(), str(tmp_path / "nope.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt.pt"):
        mf.upkern(tiny_mednext(), str(corrupt))
    truncated = tmp_path / "truncated.pt"
    torch.save(tiny_mednext().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated.pt"):
        mf.upkern(tiny_mednext(), str(truncated))


def test_upkern_to_a_smaller_kernel_is_refused_and_leaves_the_target_unchanged():
    source, target = tiny_mednext(kernel_size=7), tiny_mednext(kernel_size=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    expected = (r"upkern: 17 target kernel\(s\) are smaller than the source's \(enc_block_0.0.conv1.weight "
                r"7x7x7 -> 3x3x3.*allow_shrink=True")
    with pytest.raises(ValueError, match=expected):
        mf.upkern(target, source)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_upkern_mixed_grow_and_shrink_is_refused():
    source = tiny_mednext(kernel_size=None, enc_kernel_size=3, dec_kernel_size=7)
    target = tiny_mednext(kernel_size=None, enc_kernel_size=5, dec_kernel_size=5)
    with pytest.raises(ValueError, match=r"9 target kernel\(s\) are smaller.*bottleneck.0.conv1.weight 7x7x7"):
        mf.upkern(target, source)


def test_upkern_allow_shrink_interpolates_down():
    source, target = tiny_mednext(kernel_size=7), tiny_mednext(kernel_size=3)
    mf.upkern(target, source, allow_shrink=True)
    expected = F.interpolate(source.up_0.conv1.weight, size=(3, 3, 3), mode="trilinear", align_corners=False)
    torch.testing.assert_close(target.up_0.conv1.weight, expected, rtol=0, atol=0)
    assert torch.equal(target.stem.weight, source.stem.weight)
