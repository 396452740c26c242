"""MosaicModel: modality paths, heads per task type, freezing, routing, parameter report at ViT-B/16 scale."""

import pytest
import torch

from medmoe.engine.mosaic.report import format_parameter_report, parameter_report
from medmoe.models.vit import (
    MosaicConfig,
    MosaicModel,
    TaskSpec,
    VisionTransformerConfig,
    build_mosaic_config,
    check_labels,
    task_loss,
    task_scores,
)

FLAGS = ["pathmnist", "chestmnist", "retinamnist", "breastmnist", "organmnist3d", "nodulemnist3d"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MosaicModel(build_mosaic_config(FLAGS, 28, vit=VisionTransformerConfig.tiny_test()))


def test_forward_shapes_per_task_type(model):
    cases = {"pathmnist": ((2, 3, 28, 28), 9), "chestmnist": ((2, 1, 28, 28), 14), "retinamnist": ((2, 3, 28, 28), 5),
             "breastmnist": ((2, 1, 28, 28), 2), "organmnist3d": ((2, 1, 28, 28, 28), 11),
             "nodulemnist3d": ((2, 28, 28, 28), 2)}
    for flag, (shape, outputs) in cases.items():
        out = model(torch.rand(shape), flag)
        assert out.logits.shape == (2, outputs) and out.features.shape == (2, 32), flag


def test_grayscale_equals_repeated_rgb(model):
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model(x, "chestmnist").logits, model(x.repeat(1, 3, 1, 1), "chestmnist").logits)


def test_freezing_and_gradients_reach_only_the_active_specialist(model):
    model.zero_grad(set_to_none=True)
    model(torch.rand(2, 1, 28, 28, 28), "organmnist3d").logits.sum().backward()
    for name, p in model.named_parameters():
        group = model.parameter_group(name)
        assert p.requires_grad == (group != "backbone"), name
        got = p.grad is not None and p.grad.abs().sum() > 0
        if group in ("adapter:A", "adapter:B", "backbone") or (group == "head" and "organmnist3d" not in name):
            assert not got, name
        if name.startswith(("heads.organmnist3d", "patch_embed_3d.proj", "pos_embed_3d")) or (
                group == "adapter:C" and ".up." in name):
            assert got, name
    model.zero_grad(set_to_none=True)


def test_specialist_routing(model):
    assert [model.specialist_for(f) for f in FLAGS] == ["A", "B", "A", "B", "C", "C"]


def test_adapters_start_as_identity_on_the_backbone(model):
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        plain = model.vit.forward_tokens(model.tokens(x, "pathmnist"))[:, 0]
    torch.testing.assert_close(model.forward_features(x, "pathmnist"), plain)


def test_bad_inputs_give_clear_errors(model):
    with pytest.raises(ValueError, match="configured for 28-pixel inputs"):
        model(torch.rand(1, 3, 64, 64), "pathmnist")
    with pytest.raises(ValueError, match="3-D dataset"):
        model(torch.rand(1, 28, 28), "organmnist3d")
    with pytest.raises(ValueError, match="2-D dataset"):
        model(torch.rand(1, 1, 28, 28, 28), "pathmnist")
    with pytest.raises(ValueError, match="channel"):
        model(torch.rand(1, 1, 28, 28), "pathmnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        model(torch.rand(1, 3, 28, 28), "bloodmnist")
    chest = model.task("chestmnist")
    with pytest.raises(ValueError, match=r"multi-label targets must be \(batch, 14\)"):
        task_loss(torch.zeros(2, 14), torch.zeros(2, 1), chest)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\)"):
        task_loss(torch.zeros(2, 9), torch.tensor([[3], [9]]), model.task("pathmnist"))
    with pytest.raises(ValueError, match="class indices"):
        check_labels(torch.zeros(2, 3), model.task("pathmnist"))
    with pytest.raises(ValueError, match="binary task has 2 classes"):
        TaskSpec("x", "binary-class", 3)
    with pytest.raises(ValueError, match="duplicate"):
        MosaicConfig(tasks=[TaskSpec("x", "multi-class", 3)] * 2)


def test_losses_and_scores():
    chest = TaskSpec("chestmnist", "multi-label, binary-class", 14)
    logits = torch.randn(4, 14)
    y = torch.randint(0, 2, (4, 14))
    torch.testing.assert_close(task_loss(logits, y, chest),
                               torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float()))
    torch.testing.assert_close(task_scores(logits, chest), torch.sigmoid(logits))
    binary = TaskSpec("breastmnist", "binary-class", 2)
    s = task_scores(torch.randn(4, 2), binary)
    torch.testing.assert_close(s.sum(-1), torch.ones(4))


def test_config_round_trips_through_a_dict(model):
    cfg = MosaicConfig.from_dict(model.config.to_dict())
    assert cfg == model.config
    with pytest.raises(ValueError, match="does not know"):
        MosaicConfig.from_dict({**model.config.to_dict(), "extra": 1})


def test_vit_b16_trainable_share_is_about_8_percent():
    """18 datasets, paper's A/B/C table, real ViT-B/16 dims, built on the meta device (no memory).

    Reference (systems.md §4.2): adapters 6,575,232 (12 layers x (100,672 + 149,856 + 297,408)), heads
    87,666 (114 outputs), total 93.25M. The reference trains 6.66M (3-D tokenizer frozen by accident);
    training the 3-D tokenizer (393,984 + LayerNorm 1,536) and pos_embed_3d (513 x 768 = 393,984) gives
    7.45M = 7.99 %, the README's "7.40M / 93M (7.9 %)" up to rounding.
    """
    report = parameter_report(MosaicModel(build_mosaic_config("all", 224), device="meta"))
    g = report.groups
    assert g["adapter:A"][0] == 12 * 100_672 and g["adapter:B"][0] == 12 * 149_856 and g["adapter:C"][0] == 12 * 297_408
    assert g["head"][0] == 114 * 768 + 114
    assert g["tokenizer_3d"][0] == 393_984 + 1_536 + 393_984
    # the backbone includes the 2-D tokenizer LayerNorm (1,536, frozen): the reference's total, 93,252,594
    assert g["backbone"] == (85_798_656 + 1_536, 0)
    assert report.total == 93_252_594 and report.trainable == 7_452_402
    assert 0.07 < report.trainable_share < 0.08
    frozen3d = parameter_report(MosaicModel(build_mosaic_config("all", 224, train_tokenizer_3d=False), device="meta"))
    assert frozen3d.trainable == 6_575_232 + 87_666  # the reference code's 6.66M
    assert "7,452,402" in format_parameter_report(report)


def test_tokenizer_layernorm_is_the_default_and_old_configs_load_as_built(model):
    """New configs carry the reference's 2-D tokenizer LayerNorm; a saved config without the setting
    (written before it existed) rebuilds the model without it, so its weights load strictly."""
    assert model.config.patch_norm_2d and isinstance(model.vit.patch_embed.norm, torch.nn.LayerNorm)
    assert "vit.patch_embed.norm.weight" in model.state_dict()
    old = model.config.to_dict()
    del old["patch_norm_2d"]
    legacy = MosaicModel(MosaicConfig.from_dict(old))
    assert isinstance(legacy.vit.patch_embed.norm, torch.nn.Identity)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vit.patch_embed.norm.")}
    legacy.load_state_dict(state, strict=True)
    # the LayerNorm changes the frozen ViT's input: the outputs differ
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(model(x, "pathmnist").features, legacy(x, "pathmnist").features)


def test_no_adapter_baseline_trains_only_the_heads():
    cfg = build_mosaic_config(FLAGS, 28, vit=VisionTransformerConfig.tiny_test(), use_adapters=False,
                              train_tokenizer_3d=False)
    m = MosaicModel(cfg)
    assert not any(".adapter." in n for n, _ in m.named_parameters())
    assert {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad} == {"heads"}
    out = m(torch.rand(2, 1, 28, 28, 28), "organmnist3d")
    assert out.logits.shape == (2, 11)
