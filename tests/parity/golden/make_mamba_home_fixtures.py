"""Write the Mamba-HoME golden fixtures from a local checkout of the reference code (gmum/MambaHoME @ 8574abb).

Usage (from the medmoe repository root, with the parity extra installed)::

    python tests/parity/golden/make_mamba_home_fixtures.py /path/to/MambaHoME [--out tests/parity/golden/mamba_home]

What it builds, with fixed seeds, from the reference's own classes (``src/models/MambaHoME.py``,
``src/models/soft_moe/soft_moe_with_dynamic_slots.py``):

* ``small``: the whole ``MambaHoME`` network at a small size (:data:`SMALL`: features 4/8/16/32, depths
  2/1/1/1, bottleneck 16, experts 2/2/4/4 and 2/4/4/8, groups 64/32/16/8, 2 slots per expert, 3 classes) on a
  ``(2, 1, 32, 32, 32)`` input. Files: ``small_state.safetensors`` (the reference's ``model.state_dict()``,
  keys as in its checkpoints: ``mamba_encoder.*``, ``encoder1.*``, ...), ``small_io.safetensors`` (``x``,
  ``label`` (uint8), ``logits``, ``loss0`` = DiceCE loss of the first forward, ``loss1`` = the loss after one AdamW step
  with the reference's settings lr 1e-4, weight decay 1e-4, eps 1e-4) and ``small_config.json`` (the
  constructor arguments).
* ``home_paper_stage0``: the HoME layer alone (``HierarchicalDynamicSlotsSoftMoE``) at the paper's stage-0 sizes
  (d 48, 2048 tokens per group, 4 x 4 first-level slots, 8 second-level experts, GEGLU, mult 2) on 4,196 tokens
  (two full groups and a padded one). Files ``home_paper_stage0_state.safetensors``, ``..._io.safetensors``
  (``x``, ``out``), ``..._config.json``. The stage-3 layer (42.5M parameters, 170 MB) is too large to commit.

Substitutions and patches (nothing else in the reference is changed):

1. ``mamba_ssm`` (CUDA-only) is replaced by a stand-in module whose ``Mamba(d_model, d_state, d_conv, expand)``
   is ``mambapy.mamba.MambaBlock`` (pure PyTorch, mambapy 1.2.0; same parameter names and shapes as
   ``mamba_ssm.Mamba``: ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``, no
   in/out projection biases, ``dt_rank = ceil(d_model / 16)``).
2. The release does not construct: ``MambaHoME.__init__`` passes ``drop_path_rate`` and
   ``layer_scale_init_value`` to ``MambaEncoder``, which does not accept them (TypeError). The script replaces
   ``MambaEncoder`` in the reference module by a subclass that drops exactly these two keyword arguments.

All parameters are then perturbed with small seeded noise (so no test passes through a structured init, e.g.
expert gates of 1 or zero biases), in float32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

SMALL = {
    "in_chans": 1, "out_chans": 3, "depths": [2, 1, 1, 1], "feat_size": [4, 8, 16, 32], "drop_path_rate": 0,
    "layer_scale_init_value": 1e-6, "hidden_size": 16, "norm_name": "instance", "conv_block": True,
    "res_block": True, "spatial_dims": 3, "expert_mult": 2, "moe_dropout": 0.0, "use_geglu": True,
    "num_slots_per_expert_first": 2, "experts_list": [2, 2, 4, 4], "experts_list_second": [2, 4, 4, 8],
    "group_list": [64, 32, 16, 8],
}
HOME_PAPER_STAGE0 = {
    "dim": 48, "group_size": 2048, "num_experts_first": 4, "num_slots_per_expert_first": 4, "num_experts_second": 8,
    "expert_mult": 2, "dropout": 0.0, "geglu": True,
}
HOME_TOKENS = 4196
ADAMW = {"lr": 1e-4, "weight_decay": 1e-4, "eps": 1e-4}


def install_mamba_stand_in() -> None:
    """Register a ``mamba_ssm`` module whose ``Mamba`` is mambapy's pure-PyTorch ``MambaBlock``."""
    from mambapy.mamba import MambaBlock, MambaConfig

    class Mamba(MambaBlock):  # type: ignore[misc]
        def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
            super().__init__(MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv,
                                         expand_factor=expand))

    module = types.ModuleType("mamba_ssm")
    module.Mamba = Mamba  # type: ignore[attr-defined]
    sys.modules["mamba_ssm"] = module


def import_reference(checkout: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The reference's model module (with the construction fix) and its HoME module."""
    sys.path.insert(0, str(checkout))
    install_mamba_stand_in()
    import src.models.MambaHoME as ref_model
    import src.models.soft_moe.soft_moe_with_dynamic_slots as ref_home

    class MambaEncoder(ref_model.MambaEncoder):  # the one patch: accept and drop the two stray kwargs
        def __init__(self, *args, drop_path_rate=None, layer_scale_init_value=None, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)

    ref_model.MambaEncoder = MambaEncoder
    return ref_model, ref_home


def perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def make_small(ref_model: types.ModuleType, out: Path) -> None:
    from monai.losses import DiceCELoss
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = ref_model.MambaHoME(**SMALL)
    perturb(net)
    x = torch.randn(2, 1, 32, 32, 32)
    label = torch.randint(0, SMALL["out_chans"], (2, 1, 32, 32, 32)).float()
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), **ADAMW)
    net.train()
    logits = net(x)
    loss0 = loss_fn(logits, label)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = loss_fn(net(x), label)
    save_file(state, str(out / "small_state.safetensors"))
    save_file({"x": x, "label": label.to(torch.uint8), "logits": logits.detach().contiguous(), "loss0": loss0.detach().reshape(1),
               "loss1": loss1.detach().reshape(1)}, str(out / "small_io.safetensors"))
    (out / "small_config.json").write_text(json.dumps({"reference_kwargs": SMALL, "adamw": ADAMW}, indent=2) + "\n")
    print(f"small: {sum(v.numel() for v in state.values())} values, loss0 {loss0.item():.6f} loss1 {loss1.item():.6f}")


def make_home(ref_home: types.ModuleType, out: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    layer = ref_home.HierarchicalDynamicSlotsSoftMoE(**HOME_PAPER_STAGE0)
    perturb(layer)
    x = torch.randn(1, HOME_TOKENS, HOME_PAPER_STAGE0["dim"])
    with torch.no_grad():
        y = layer(x)
    save_file({k: v.contiguous() for k, v in layer.state_dict().items()},
              str(out / "home_paper_stage0_state.safetensors"))
    save_file({"x": x, "out": y.contiguous()}, str(out / "home_paper_stage0_io.safetensors"))
    (out / "home_paper_stage0_config.json").write_text(
        json.dumps({"reference_kwargs": HOME_PAPER_STAGE0, "tokens": HOME_TOKENS}, indent=2) + "\n")
    print(f"home stage 0: {sum(p.numel() for p in layer.parameters())} parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="local checkout of gmum/MambaHoME (commit 8574abb)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "mamba_home")
    args = parser.parse_args()
    if not (args.checkout / "src" / "models" / "MambaHoME.py").is_file():
        parser.error(f"{args.checkout} is not a MambaHoME checkout (no src/models/MambaHoME.py)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    ref_model, ref_home = import_reference(args.checkout.resolve())
    make_small(ref_model, args.out)
    make_home(ref_home, args.out)


if __name__ == "__main__":
    main()
