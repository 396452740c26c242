"""CUDA paths: every model family on a GPU computes what it computes on the CPU, and the trainers run there.

Skipped without a CUDA device (the default test run and CI have none); run on a GPU machine with
``pytest -m gpu``. TF32 is switched off so CUDA float32 matches the CPU to float32 rounding; the mixed-precision
(bf16) paths are checked by training, not by comparing numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

import medmoe
from medmoe import create_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_float32() -> Iterator[None]:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _bag_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two bags of 60 and 37 instances x 64 features (padded, with a mask) and their labels."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 60, 64, generator=g)
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[1, 37:] = False
    return x.to(device), mask.to(device), torch.tensor([0, 2], device=device)


def _loss_and_grads(
    model: torch.nn.Module, device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    x, mask, y = _bag_batch(device)
    out = model(x, mask, label=y)
    loss = out.total_loss(F.cross_entropy(out.logits, y))
    params = [p for p in model.parameters() if p.requires_grad]
    return out.logits.detach(), list(torch.autograd.grad(loss, params, allow_unused=True))


def _gradient_errors(
    grads: list[torch.Tensor | None], ref_grads: list[torch.Tensor | None], names: list[str]
) -> dict[str, float]:
    """``||g - r|| / (||r|| + 1e-3 ||r_all|| / sqrt(#tensors))`` per parameter (one side ``None``: infinite).

    The floor keeps a tensor whose true gradient is zero (a bias added before a softmax, which the softmax
    cancels) from turning rounding noise into a large relative error.
    """
    present = [r for r in ref_grads if r is not None]
    floor = 1e-3 * float(torch.cat([r.flatten() for r in present]).norm()) / len(present) ** 0.5
    errors = {}
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        if g is None and r is None:
            continue
        if g is None or r is None:
            errors[name] = float("inf")
            continue
        errors[name] = float((g.cpu() - r).norm()) / (float(r.norm()) + floor)
    return errors


@pytest.mark.parametrize("name", medmoe.list_models())
def test_zoo_model_on_cuda_matches_cpu(name: str) -> None:
    """Eval mode (no dropout draws): logits agree elementwise, every parameter gradient to 1 % in norm.

    Gradients are compared by norm: a pre-activation within rounding of a ReLU's kink can fall on either
    side on the two devices, which changes single gradient elements but not the gradient. The worst case,
    RRT-MIL + Mammoth's slot-norm gain, differs by 0.46 % between float32 and float64 on the CPU alone.
    """
    torch.manual_seed(0)
    model = create_model(name, in_dim=64, num_classes=3).eval()
    gpu_model = copy.deepcopy(model).to(CUDA)
    ref_logits, ref_grads = _loss_and_grads(model, torch.device("cpu"))
    logits, grads = _loss_and_grads(gpu_model, CUDA)
    torch.testing.assert_close(logits.cpu(), ref_logits, rtol=1e-4, atol=1e-4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    errors = _gradient_errors(grads, ref_grads, names)
    worst = max(errors, key=errors.get)
    print(f"{name}: worst gradient {worst} error {errors[worst]:.2e}")
    assert errors[worst] < 1e-2, (worst, errors[worst])


@pytest.mark.parametrize("name", medmoe.list_models())
def test_zoo_model_trains_on_cuda_in_bf16(name: str) -> None:
    """Train mode (dropout on the GPU) under bf16 autocast with the fused AdamW: finite loss, weights move."""
    from medmoe.engine.optim import make_adamw

    torch.manual_seed(0)
    model = create_model(name, in_dim=64, num_classes=3).to(CUDA).train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = make_adamw(params, lr=1e-3, weight_decay=1e-5)
    x, mask, y = _bag_batch(CUDA)
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, mask, label=y)
            loss = out.total_loss(F.cross_entropy(out.logits.float(), y))
        assert torch.isfinite(loss), name
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(torch.isfinite(p).all() for p in params)


def test_mamba_home_on_cuda_matches_cpu() -> None:
    """Mamba-HoME (torch selective scan, hierarchical soft MoE) forward and backward on a 32^3 volume."""
    from medmoe.models.seg.mamba_home import MambaHoME, MambaHoMEConfig

    torch.manual_seed(0)
    model = MambaHoME(MambaHoMEConfig.tiny(in_channels=1, num_classes=2)).eval()
    gpu_model = copy.deepcopy(model).to(CUDA)
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    results = []
    for m, device in ((model, torch.device("cpu")), (gpu_model, CUDA)):
        out = m(x.to(device))
        logits = out[0] if isinstance(out, (tuple, list)) else out
        grads = torch.autograd.grad(logits.square().mean(), list(m.parameters()), allow_unused=True)
        results.append((logits.detach().cpu(), [None if g is None else g.cpu() for g in grads]))
    (ref_logits, ref_grads), (logits, grads) = results
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=2e-3, atol=1e-4)


def test_mosaic_on_cuda_matches_cpu() -> None:
    """MOSAIC (frozen tiny ViT, specialist adapters) on 2-D and 3-D inputs."""
    from medmoe.engine.mosaic.training import build_mosaic_config
    from medmoe.models.vit import MosaicModel, VisionTransformerConfig

    torch.manual_seed(0)
    flags = ["pathmnist", "chestmnist", "organmnist3d"]
    model = MosaicModel(build_mosaic_config(flags, 28, vit=VisionTransformerConfig.tiny_test())).eval()
    gpu_model = copy.deepcopy(model).to(CUDA)
    g = torch.Generator().manual_seed(3)
    for flag, shape in (
        ("pathmnist", (2, 3, 28, 28)),
        ("chestmnist", (2, 1, 28, 28)),
        ("organmnist3d", (2, 1, 28, 28, 28)),
    ):
        x = torch.rand(shape, generator=g)
        ref = model(x, flag).logits
        torch.testing.assert_close(gpu_model(x.to(CUDA), flag).logits.cpu(), ref, rtol=1e-4, atol=1e-4)


def test_mil_trainer_on_cuda_learns_and_its_checkpoint_runs_on_cpu(tmp_path, monkeypatch) -> None:
    """``train_one_fold`` on CUDA (precision auto = bf16-mixed); the checkpoint evaluates on the CPU alike."""
    from pathlib import Path

    from medmoe.engine import TrainConfig, evaluate, load_checkpoint, train_one_fold
    from medmoe.engine.precision import resolve_precision

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "engine"))  # undone after the test
    from engine_synthetic import TINY_ABMIL, synthetic_bags

    assert resolve_precision("auto", "cuda") in ("bf16-mixed", "16-mixed")
    train, val, test = synthetic_bags(48, seed=0), synthetic_bags(24, seed=1), synthetic_bags(24, seed=2)
    cfg = TrainConfig(epochs=6, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cuda")
    res = train_one_fold("abmil.base_mammoth", train, val, test, cfg, tmp_path, TINY_ABMIL)
    assert res.test_metrics["auroc"] > 0.8, res.history
    model, info = load_checkpoint(res.checkpoint_dir)
    metrics, _, _, _ = evaluate(model, test, feature_stats=info.get("feature_stats"))
    assert metrics["auroc"] == pytest.approx(res.test_metrics["auroc"], abs=0.05)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_segmentation_trainer_on_cuda(tmp_path, precision: str) -> None:
    """``train_segmentation`` of a tiny Mamba-HoME on CUDA, then sliding-window evaluation there."""
    from medmoe.data.seg_transforms import SegTransformConfig
    from medmoe.data.volumes import make_synthetic_volumes
    from medmoe.engine.seg.training import SegTrainConfig, train_segmentation
    from medmoe.models.seg import create_seg_model

    data = make_synthetic_volumes(tmp_path / "vols", n_cases=2, shape=(32, 32, 32), num_classes=2)
    torch.manual_seed(0)
    model = create_seg_model("mamba_home.tiny", 1, 2)
    tcfg = SegTransformConfig(modality="other", roi_size=(32, 32, 32), num_samples=2)
    cfg = SegTrainConfig(
        epochs=1,
        steps_per_epoch=4,
        lr=3e-3,
        progress=False,
        hd95=False,
        accelerator="cuda",
        precision=precision,
    )
    result = train_segmentation(model, data.cases[:1], data.cases[1:], tcfg, cfg, tmp_path / "run")
    assert result.steps == 4 and 0.0 <= result.val.mean_dice <= 1.0
    assert next(model.parameters()).device.type == "cuda"


def test_mosaic_trainer_on_cuda(tmp_path) -> None:
    """Two rounds of ``train_mosaic`` on CUDA (bf16-mixed) with fake MedMNIST data."""
    from medmoe.data import write_fake_medmnist
    from medmoe.engine.mosaic.training import (
        MosaicTrainConfig,
        build_mosaic_config,
        load_medmnist_data,
        train_mosaic,
    )
    from medmoe.models.vit import VisionTransformerConfig

    flags = ["pathmnist", "nodulemnist3d"]
    write_fake_medmnist(tmp_path / "mnist", flags, 28, {"train": 32, "val": 16, "test": 16}, seed=1)
    data = load_medmnist_data(tmp_path / "mnist", flags, 28)
    torch.manual_seed(0)
    model_cfg = build_mosaic_config(flags, 28, vit=VisionTransformerConfig.tiny_test())
    train_cfg = MosaicTrainConfig(
        rounds=2, batch_size=16, lr=3e-4, warmup_rounds=1, progress=False, accelerator="cuda", seed=0
    )
    result = train_mosaic(model_cfg, train_cfg, data, tmp_path / "run", weights="none", data_note="SYNTHETIC")
    assert (result.checkpoint_dir / "model.safetensors").is_file()


def test_compiled_mammoth_model_on_cuda_matches_eager(tmp_path, monkeypatch) -> None:
    """``torch.compile`` (inductor, Triton kernels) of ABMIL + Mammoth on CUDA."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = create_model("abmil.base_mammoth", in_dim=64, num_classes=3).to(CUDA).eval()
    x, mask, _ = _bag_batch(CUDA)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x, mask).logits, model(x, mask).logits, rtol=1e-3, atol=1e-4)
    torch._dynamo.reset()


@pytest.mark.parametrize("padded", [False, True])
def test_transformer_attention_dropout_on_cuda(padded: bool) -> None:
    """Above ``attn_chunk_elements`` with attention dropout: one fused SDPA call without padding, checkpointed
    query chunks with it; both train (finite loss, gradients everywhere) and agree with the CPU in eval."""
    torch.manual_seed(0)
    model = create_model("transformer.base", in_dim=64, num_classes=3, attn_chunk_elements=1000).to(CUDA)
    x, mask, y = _bag_batch(CUDA)
    if not padded:
        x, mask, y = x[:1], None, y[:1]
    out = model.train()(x, mask, label=y)
    loss = out.total_loss(F.cross_entropy(out.logits, y))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
    )
    model.eval()
    cpu_model = copy.deepcopy(model).cpu()
    ref = cpu_model(x.cpu(), None if mask is None else mask.cpu()).logits
    torch.testing.assert_close(model(x, mask).logits.cpu(), ref, rtol=1e-4, atol=1e-4)
