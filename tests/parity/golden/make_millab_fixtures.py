"""Write the golden parity fixtures of MIL-Lab, the MAMMOTH fork's ``millab/`` and the CLAM repository.

The fixtures are produced by the reference code itself (not by medmoe): every model is built by the
reference's own ``create_model`` (MIL-Lab's ``<model>.base``, the fork's ``<model>.base_mammoth``) or
class (CLAM's ``CLAM_SB`` / ``CLAM_MB``) with a fixed seed, run in eval mode on a fixed short bag, and
saved as

* ``<id>.safetensors``: the reference's state dict in the reference's own key format (MIL-Lab: the
  Hugging Face wrapper's ``model.`` keys; CLAM: ``attention_net.*``);
* ``<id>.io.safetensors``: the input bag ``x`` (1, 48, 64), the label, and the reference's ``logits``,
  ``attention`` (raw, in the reference's own shape) and ``instance_loss`` where the model has one;
* ``<id>.json``: the reference, its commit, the name and keyword arguments it was built with, the
  medmoe name + settings that must reproduce it and, for MIL-Lab, the model's Hugging Face config (what
  ``save_pretrained`` writes to ``config.json``).

``tests/parity/test_golden_millab.py`` loads each state dict through ``medmoe.create_model(...,
checkpoint_path=...)`` (i.e. :mod:`medmoe.interop`) and compares outputs (rtol 1e-5), without network or
reference code.

Small dims keep the fixtures small (a few MB in all): 64-d features (``in_dim=64``), ``embed_dim=64``,
attention widths 32 (ILRA: ``embed_dim=32``), Mammoth with its structure (16 heads, shared LoRA, auto rank,
keep_slots) but 8 experts x 4 slots and ``slot_dim=32``. Every size is passed to the reference as its own keyword
argument, and the same sizes to medmoe.

Stubbed, because a forward pass does not need them (nothing else is changed):

* ``timm.models.layers.DropPath``: RRT imports it; with ``drop_path=0`` it is the identity, so the stub
  is ``nn.Identity`` (raises if asked for p > 0);
The models are built as MIL-Lab's ``build_model`` does (YAML config -> config class -> model class), with
the fixture sizes written into the config (MIL-Lab's ``RRTMILModel`` ignores keyword overrides).

Also stubbed:

* ``nn.Module.cuda``: MIL-Lab's CLAM moves the smooth top-1 SVM loss to CUDA; here it stays on the CPU;
* ``random.shuffle`` inside MIL-Lab's ``dftd`` module: DTFD reshuffles the instances on every forward,
  even in eval mode; it is replaced by the identity (ordered pseudo-bags), which medmoe reproduces with
  ``eval_split='ordered'``. DTFD is also built with ``total_instance=16`` (2 instances per group): the
  shipped 4 gives MIL-Lab 0 per group (its "min" slice then takes every instance), which medmoe fixes.
* ``src.mammoth`` for the fork: its ``millab`` models import ``from src.mammoth import Mammoth`` but the
  package has no such module; it is pointed at the fork's own ``src/mammoth`` (same commit).
* The fork's ``ilra.base_mammoth`` fails on its shipped ``slot_dim 256 == embed_dim 256`` (rank 0); at the
  fixture sizes (``embed_dim 64``, ``slot_dim 32``) it builds, so the architecture is still compared.

Regenerate (about a minute on a CPU; needs the reference code and what it imports, in a throwaway
target, never the project's venv):

    # reference code (the `fetch` tool or git clone), at the commits recorded in the .json files
    git clone https://github.com/mahmoodlab/MIL-Lab            /tmp/ref/MIL-Lab          # dfc3c17
    git clone https://github.com/AndreaMariani-AM/MAMMOTH      /tmp/ref/MAMMOTH          # d704342
    git clone https://github.com/mahmoodlab/CLAM               /tmp/ref/CLAM
    git clone https://github.com/oval-group/smooth-topk        /tmp/ref/smooth-topk
    pip install --target /tmp/refpkgs "transformers==4.53.1" loguru omegaconf torch_geometric future
    python tests/parity/golden/make_millab_fixtures.py --millab /tmp/ref/MIL-Lab \\
        --mammoth /tmp/ref/MAMMOTH --clam /tmp/ref/CLAM --topk /tmp/ref/smooth-topk \\
        --site-packages /tmp/refpkgs --out tests/parity/golden/millab

Each reference runs in its own subprocess (MIL-Lab and the fork both name their package ``src``).
``--full-size`` writes the same fixtures at the configs' own sizes (1024-d bag of 500 patches, Mammoth
30 x 10, ILRA+Mammoth skipped: the fork crashes there) into another ``--out`` folder, for a one-off check
with ``tests/parity/test_golden_millab.py``'s logic (``MEDMOE_GOLDEN_DIR=folder pytest ...``); they are
tens of MB and are not committed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

IN_DIM, EMBED, SMALL_ATTN, BAG = 64, 64, 32, 48
FULL = False  # --full-size: the configs' own sizes (not committed; a one-off check at real sizes)
MOE_ARGS = {"num_experts": 8, "num_slots": 4, "num_heads": 16, "slot_dim": 32, "share_lora_weights": True,
            "dropout": 0.1, "auto_rank": True, "keep_slots": True}
#: what medmoe's base_mammoth configs must be told (they hold 30 experts x 10 slots, slot_dim 256 / 128)
MOE_OVERRIDES = {k: MOE_ARGS[k] for k in ("num_experts", "num_slots", "slot_dim")}

#: reference model -> (reference kwargs, medmoe overrides), on top of in_dim / embed_dim.
MODELS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "abmil": ({"attn_dim": SMALL_ATTN}, {"attn_dim": SMALL_ATTN}),
    "clam": ({"attention_dim": SMALL_ATTN}, {"attention_dim": SMALL_ATTN}),
    "dsmil": ({"attn_dim": SMALL_ATTN}, {"attn_dim": SMALL_ATTN}),
    "transmil": ({}, {"num_landmarks": EMBED // 2}),
    "transformer": ({"encoder_mlp_dim": 128}, {"encoder_mlp_dim": 128}),
    "ilra": ({"topk": 16, "embed_dim": 32}, {"topk": 16, "embed_dim": 32}),
    "rrt": ({"mlp_dim": EMBED, "trans_dim": 8}, {"trans_dim": 8}),  # MIL-Lab fixes 256 landmarks
    "wikg": ({}, {}),
    "dftd": ({"attention_dim": SMALL_ATTN, "total_instance": 16},
             {"attention_dim": SMALL_ATTN, "total_instance": 16, "eval_split": "ordered"}),
}
MEDMOE_NAMES = {"dftd": "dtfd"}


COMMITS: dict[str, str] = {}  # --commit NAME=SHA, for snapshots without .git


def _git_commit(path: Path) -> str:
    for name, sha in COMMITS.items():
        if name.lower() in str(path).lower():
            return sha
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - a snapshot without .git
        return "unknown"


def _stub_timm() -> None:
    from torch import nn

    class DropPath(nn.Identity):
        def __init__(self, p: float = 0.0, *args: Any, **kwargs: Any) -> None:
            super().__init__()
            if p:
                raise RuntimeError("the DropPath stub only stands in for drop_path=0")

    timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
    layers.DropPath = DropPath  # type: ignore[attr-defined]
    timm.models, models.layers = models, layers  # type: ignore[attr-defined]
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def _save(out: Path, fid: str, state: dict[str, Any], io: dict[str, Any], meta: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    clean = {}
    for k, v in state.items():  # safetensors refuses shared storage: copy aliases
        v = v.detach().contiguous()
        clean[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    save_file(clean, str(out / f"{fid}.safetensors"))
    save_file({k: v.detach().contiguous().to(torch.float32 if v.is_floating_point() else v.dtype)
               for k, v in io.items() if v is not None}, str(out / f"{fid}.io.safetensors"))
    (out / f"{fid}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {fid}: {len(state)} tensors")


def _bag() -> Any:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(1, BAG, IN_DIM, generator=g)


def run_millab(root: Path, fork: bool, mammoth_root: Path | None, topk: Path | None, out: Path) -> None:
    """Build every MIL-Lab model at ``base`` (MIL-Lab main) or ``base_mammoth`` (the fork) and save it."""
    import random

    import torch
    import transformers  # noqa: F401 - imported before the timm stub (it probes for timm)
    from torch import nn

    _stub_timm()
    sys.path.insert(0, str(root))
    if topk is not None:
        sys.path.insert(0, str(topk))
    if fork:
        import src  # the fork's millab/src package

        spec = importlib.util.spec_from_file_location(
            "src.mammoth", mammoth_root / "src/mammoth/__init__.py",
            submodule_search_locations=[str(mammoth_root / "src/mammoth")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["src.mammoth"] = mod
        src.mammoth = mod
        spec.loader.exec_module(mod)
    nn.Module.cuda = lambda self, device=None: self  # CLAM's SVM loss: stay on the CPU
    import yaml
    from src._global_mappings import CONFIG_PATH, MODEL_ENTRYPOINTS
    from src.models import dftd as dftd_module

    def create_model(name: str, num_classes: int, **kwargs: Any) -> Any:
        """MIL-Lab's build_model with the sizes set in the config (RRTMILModel ignores keyword overrides)."""
        model_name, config_name, _ = name.split(".")
        with open(Path(CONFIG_PATH) / model_name / f"{config_name}.yaml") as fh:
            cfg = yaml.safe_load(fh) or {}
        cfg.update(num_classes=num_classes, **kwargs)
        model_cls, config_cls = MODEL_ENTRYPOINTS[model_name]
        return model_cls(config=config_cls(**cfg))

    dftd_module.random = types.SimpleNamespace(shuffle=lambda seq: None)  # ordered pseudo-bags
    config = "base_mammoth" if fork else "base"
    reference = "MAMMOTH fork millab/" if fork else "MIL-Lab"
    commit = _git_commit(mammoth_root if fork else root)
    x = _bag()
    label = torch.tensor([1])
    for name, (ref_kwargs, our_overrides) in MODELS.items():
        kwargs = {"in_dim": IN_DIM, "embed_dim": EMBED, **ref_kwargs}
        ours = {"in_dim": IN_DIM, "embed_dim": EMBED, **our_overrides}
        if FULL:  # the YAML's sizes (and moe_args); DTFD keeps the settings that make it comparable
            kwargs = {"in_dim": IN_DIM, **{k: v for k, v in ref_kwargs.items() if k == "total_instance"}}
            ours = {"in_dim": IN_DIM, **{k: v for k, v in our_overrides.items() if k in ("total_instance", "eval_split")}}
            if fork and name == "ilra":
                print("  ilra.base_mammoth: skipped at full size (the fork's slot_dim 256 == embed_dim 256 crashes)")
                continue
        elif fork:
            moe = dict(MOE_ARGS)
            if kwargs["embed_dim"] == moe["slot_dim"]:  # ILRA at 32: Mammoth needs dim != slot_dim
                moe["slot_dim"] //= 2
            kwargs["moe_args"] = moe
            ours["patch_embed_args"] = {k: moe[k] for k in MOE_OVERRIDES}
        torch.manual_seed(0)
        random.seed(0)
        model = create_model(f"{name}.{config}.uni", num_classes=2, **kwargs).eval()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        call: dict[str, Any] = {"h": x, "label": label, "loss_fn": nn.CrossEntropyLoss()}
        with torch.no_grad():
            results_att, log_att = model(**call, return_attention=True)
            attention = log_att.get("attention")
            try:  # logits without attention: MIL-Lab's Transformer changes its logits when asked for attention
                results, log = model(**call, return_attention=False)
            except KeyError as err:  # MIL-Lab's CLAM needs return_attention=True when given a label
                print(f"  {name}: return_attention=False fails ({err!r}); logits taken with attention")
                results, log = results_att, log_att
            logits = results["logits"]
        inst = log.get("instance_loss")
        io = {"x": x, "label": label, "logits": logits,
              "attention": attention if isinstance(attention, torch.Tensor) else None,
              "instance_loss": torch.tensor(float(inst)) if isinstance(inst, (int, float)) and inst != -1 else None}
        meta = {"reference": reference, "commit": commit, "reference_name": f"{name}.{config}.uni",
                "reference_kwargs": {k: v for k, v in kwargs.items()},
                "medmoe_name": f"{MEDMOE_NAMES.get(name, name)}.{config}",
                "medmoe_overrides": ours, "num_classes": 2,
                "attention_shape": list(attention.shape) if isinstance(attention, torch.Tensor) else None,
                "reference_config": json.loads(model.config.to_json_string())}  # its Hugging Face config.json
        _save(out, f"millab_{name}_{config}", state, io, meta)


def run_clam(root: Path, out: Path) -> None:
    """The original CLAM repository's CLAM-SB and CLAM-MB, ``size_arg='small'`` (CLAM fixes the widths at
    512 and 256; only the input is 64-d)."""
    import torch
    from torch import nn

    spec = importlib.util.spec_from_file_location("clam_model_clam", root / "models/model_clam.py")
    module = importlib.util.module_from_spec(spec)  # the file alone: models/__init__ imports the encoders
    spec.loader.exec_module(module)
    CLAM_MB, CLAM_SB = module.CLAM_MB, module.CLAM_SB

    x = _bag()
    label = torch.tensor([1])
    for cls, tag, multi in ((CLAM_SB, "sb", False), (CLAM_MB, "mb", True)):
        torch.manual_seed(0)
        model = cls(gate=True, size_arg="small", dropout=0.25, k_sample=8, n_classes=2,
                    instance_loss_fn=nn.CrossEntropyLoss(), subtyping=False, embed_dim=IN_DIM).eval()
        with torch.no_grad():
            logits, _, _, a_raw, inst = model(x.squeeze(0), label=label, instance_eval=True)
        meta = {"reference": "CLAM", "commit": _git_commit(root), "reference_name": f"CLAM_{tag.upper()}",
                "reference_kwargs": {"gate": True, "size_arg": "small", "dropout": 0.25, "k_sample": 8,
                                     "n_classes": 2, "embed_dim": IN_DIM, "instance_loss_fn": "ce"},
                "medmoe_name": "clam.base_mb" if multi else "clam.base_ce",
                "medmoe_overrides": {"in_dim": IN_DIM, "embed_dim": 512, "attention_dim": 256},
                "num_classes": 2, "attention_shape": list(a_raw.shape)}
        io = {"x": x, "label": label, "logits": logits, "attention": a_raw,
              "instance_loss": torch.as_tensor(inst["instance_loss"]).float()}
        _save(out, f"clam_{tag}", {k: v.clone() for k, v in model.state_dict().items()}, io, meta)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--millab", type=Path, help="MIL-Lab checkout (repository root)")
    ap.add_argument("--mammoth", type=Path, help="MAMMOTH fork checkout (has millab/ and src/mammoth)")
    ap.add_argument("--clam", type=Path, help="CLAM repository checkout")
    ap.add_argument("--topk", type=Path, help="oval-group/smooth-topk checkout (CLAM's SVM loss)")
    ap.add_argument("--site-packages", type=Path, help="folder with transformers, loguru, torch_geometric ...")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "millab")
    ap.add_argument("--commit", action="append", default=[], metavar="NAME=SHA",
                    help="commit of a checkout without .git (NAME: a part of its path, e.g. MIL-Lab)")
    ap.add_argument("--full-size", action="store_true",
                    help="build at the configs' own sizes (1024-d bag of 500 patches); for a one-off check, "
                    "not for committing (tens of MB)")
    ap.add_argument("--part", choices=["millab", "fork", "clam"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.site_packages:
        sys.path.insert(0, str(args.site_packages))
    COMMITS.update(item.split("=", 1) for item in args.commit)
    if args.full_size:
        global FULL, IN_DIM, BAG
        FULL, IN_DIM, BAG = True, 1024, 500
    if args.part == "millab":
        run_millab(args.millab, False, None, args.topk, args.out)
    elif args.part == "fork":
        run_millab(args.mammoth / "millab", True, args.mammoth, args.topk, args.out)
    elif args.part == "clam":
        run_clam(args.clam, args.out)
    else:
        parts = [p for p, given in (("millab", args.millab), ("fork", args.mammoth), ("clam", args.clam)) if given]
        if not parts:
            ap.error("give at least one of --millab, --mammoth, --clam")
        for part in parts:
            cmd = [sys.executable, __file__, "--part", part, "--out", str(args.out)]
            for flag in ("millab", "mammoth", "clam", "topk", "site_packages"):
                value = getattr(args, flag)
                if value is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(value)]
            for item in args.commit:
                cmd += ["--commit", item]
            if args.full_size:
                cmd.append("--full-size")
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
