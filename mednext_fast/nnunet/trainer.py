"""nnU-Net v2 trainers that train our MedNeXt with the official MedNeXt recipe.

``nnUNetTrainerMedNeXt_{S,B,M,L}_k{3,5,7}``: the paper variant and kernel from the name. ``nnUNetTrainerMedNeXt``:
the architecture from the configuration's ``architecture.arch_kwargs`` (MedNeXt kwargs, as the plans command
and the export write them). The recipe follows the official MedNeXt trainer (nnU-Net v1,
``nnUNetTrainerV2_Optim_and_LR``): AdamW lr 1e-3, eps 1e-4 (1e-8 can give NaNs in fp16), weight decay 3e-5,
poly LR (exponent 0.9) per epoch, gradient-norm clip 12 (nnU-Net's train_step), deep supervision on all five
outputs, gradient checkpointing for M and L. Everything else (data, augmentation, loss, validation,
checkpoints, inference) is nnU-Net's own.

Options, as environment variables (nnU-Net builds trainers with fixed arguments):
* ``MEDNEXT_FAST_BACKEND``: the MedNeXt backend, default 'auto' (Triton on CUDA, the C++ kernels for CPU
  inference, PyTorch otherwise); 'torch' runs the reference path (the benchmark's baseline).
* ``MEDNEXT_FAST_UPKERN``: an nnU-Net checkpoint of a smaller-kernel run (e.g. k3's checkpoint_final.pth)
  to start a new run from, kernels resized (UpKern). ``python -m mednext_fast.nnunet train ...
  -pretrained_weights CKPT`` does the same through nnU-Net's flag.
"""
from __future__ import annotations

import os

from mednext_fast.nnunet import require_nnunetv2

require_nnunetv2()

import torch  # noqa: E402
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # noqa: E402
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402

from mednext_fast import backends  # noqa: E402
from mednext_fast.configs import KERNEL_SIZES, VARIANTS, variant_config  # noqa: E402
from mednext_fast.nnunet import network  # noqa: E402

N_OUTPUTS = 5  # out_0 (full resolution) .. out_4 (1/16)


class nnUNetTrainerMedNeXt(nnUNetTrainer):
    """MedNeXt with the official recipe; the architecture from the plans (see the module docstring)."""

    mednext_variant: str | None = None  # set by the named subclasses
    mednext_kernel: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # Fail at start-up, not at the first forward: the patch must suit MedNeXt's four down-samplings.
        network.check_patch(self.configuration_manager.patch_size, f"configuration {configuration!r}")
        self.initial_lr = 1e-3
        self.weight_decay = 3e-5  # nnU-Net's default, which the official MedNeXt trainer keeps
        self.adam_eps = 1e-4

    # -- network ---------------------------------------------------------------------------------
    @classmethod
    def mednext_config(cls, arch_kwargs: dict | None) -> dict:
        if cls.mednext_variant is not None:
            return variant_config(cls.mednext_variant, cls.mednext_kernel)
        return network.config_from_arch_kwargs(arch_kwargs or {}, cls.__name__)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, *more, enable_deep_supervision: bool = True):
        """Both nnU-Net signatures. >= 2.7: (plans_manager, configuration_manager, n_in, n_out,
        enable_deep_supervision), the last positional (trainer) or keyword (predictor). <= 2.6:
        (arch_class_name, arch_kwargs, arch_kwargs_req_import, n_in, n_out[, enable_deep_supervision]), told
        apart by the class name string in first place. nnU-Net 2.8 picks the new one as the signature names
        plans_manager."""
        if isinstance(plans_manager, str):  # old signature: shift the arguments into place
            arch_kwargs, n_in, n_out = configuration_manager, num_output_channels, more[0]
            deep_supervision = more[1] if len(more) > 1 else enable_deep_supervision
        else:
            arch_kwargs = configuration_manager.network_arch_init_kwargs
            n_in, n_out = num_input_channels, num_output_channels
            deep_supervision = more[0] if more else enable_deep_supervision
        backend = os.environ.get("MEDNEXT_FAST_BACKEND", "auto")
        return network.build(cls.mednext_config(arch_kwargs), n_in, n_out, deep_supervision, backend=backend)

    def set_deep_supervision_enabled(self, enabled: bool):
        network.set_deep_supervision(self.network, enabled)

    def initialize(self):
        super().initialize()
        model = network.unwrap(self.network)
        self.print_to_log_file(f"mednext-fast: {network.describe(self.mednext_config(self._arch_kwargs()))}, "
                               f"backend {model.backend!r} ({backend_summary(model, self.device)})")

    def _arch_kwargs(self) -> dict:
        return self.configuration_manager.network_arch_init_kwargs

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      eps=self.adam_eps)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _get_deep_supervision_scales(self):
        """One target per output: 1, 1/2, 1/4, 1/8, 1/16 (nnU-Net's rule would drop the coarsest)."""
        if not self.enable_deep_supervision:
            return None
        dims = len(self.configuration_manager.patch_size)
        return [[1.0 / 2 ** i] * dims for i in range(N_OUTPUTS)]

    def _build_loss(self):
        """nnU-Net's Dice+CE, with the official MedNeXt weights on the five outputs: 1/2^i, normalised.

        The official trainer passed nnU-Net v1 six pooling levels so that the weight rule (1/2^i, last level
        0, normalised) left all five outputs non-zero: [1, 1/2, 1/4, 1/8, 1/16] / 1.9375. nnU-Net v2's rule on
        our five scales would give out_4 weight 0.
        """
        loss = super()._build_loss()
        if isinstance(loss, DeepSupervisionWrapper):
            weights = [1.0 / 2 ** i for i in range(N_OUTPUTS)]
            loss = DeepSupervisionWrapper(loss.loss, [w / sum(weights) for w in weights])
        return loss

    # -- UpKern ----------------------------------------------------------------------------------
    def on_train_start(self):
        super().on_train_start()
        source = os.environ.get("MEDNEXT_FAST_UPKERN")
        if source and self.current_epoch == 0:  # a continued run keeps its own weights
            from mednext_fast.nnunet.upkern import load_pretrained

            load_pretrained(self.network, source, log=self.print_to_log_file)


def backend_summary(model, device: torch.device) -> str:
    """Which backend runs training and inference forwards on ``device`` (as backends.select will decide)."""
    x = torch.zeros(1, model.in_channels, 32, 32, 32, device=device)
    with torch.no_grad():
        infer = backends.select(model, x)
    train = backends.select(model, x.requires_grad_(True))
    name = {None: "torch"}
    return (f"training: {name.get(train, getattr(train, 'name', None))}, "
            f"inference: {name.get(infer, getattr(infer, 'name', None))}")


def _named(variant: str, kernel: int) -> type:
    doc = (f"MedNeXt-{variant} kernel {kernel} (the paper's configuration"
           f"{', gradient checkpointing' if VARIANTS[variant]['checkpoint_style'] else ''}) with the official recipe.")
    return type(f"nnUNetTrainerMedNeXt_{variant}_k{kernel}", (nnUNetTrainerMedNeXt,),
                {"mednext_variant": variant, "mednext_kernel": kernel, "__doc__": doc, "__module__": __name__})


# nnU-Net finds trainers by class name in a module's namespace, so each variant is a module-level name.
for _v in VARIANTS:
    for _k in KERNEL_SIZES:
        _cls = _named(_v, _k)
        globals()[_cls.__name__] = _cls
__all__ = ["nnUNetTrainerMedNeXt"] + [f"nnUNetTrainerMedNeXt_{v}_k{k}" for v in VARIANTS for k in KERNEL_SIZES]
