"""One registry for every model family: ``create_model`` / ``list_models`` build and list MIL, segmentation
and ViT/MOSAIC models by name, and refuse unknown names and families with the names listed."""

import pytest
import torch

import medmoe
from medmoe.models.mil.base import MILModel
from medmoe.models.seg import MambaHoME, MonaiSegNet, list_seg_models
from medmoe.models.vit import MosaicModel, list_vit_models
from medmoe.registry import FAMILIES, model_family, register_model

pytest.importorskip("monai")


def test_create_model_builds_one_model_of_each_family():
    mil = medmoe.create_model("abmil.base", num_classes=3, in_dim=12)
    assert isinstance(mil, MILModel) and mil.family == "mil" and mil.config.num_classes == 3
    assert mil(torch.randn(1, 5, 12)).logits.shape == (1, 3)

    seg = medmoe.create_model("unet.small", num_classes=3, in_channels=2)
    assert isinstance(seg, MonaiSegNet) and seg.family == "seg" and seg.model_name == "unet.small"
    assert seg(torch.randn(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)

    vit = medmoe.create_model("mosaic.tiny", datasets=["pathmnist", "organmnist3d"], size=28)
    assert isinstance(vit, MosaicModel) and vit.family == "vit" and vit.model_name == "mosaic"
    assert vit.config.vit.embed_dim == 32 and [t.name for t in vit.config.tasks] == [
        "pathmnist",
        "organmnist3d",
    ]
    assert vit(torch.rand(2, 3, 28, 28), "pathmnist").logits.shape == (2, 9)


def test_the_same_model_with_or_without_the_family_prefix():
    torch.manual_seed(0)
    a = medmoe.create_model("seg.unet.small", num_classes=2)
    torch.manual_seed(0)
    b = medmoe.create_model("unet.small", num_classes=2)
    assert a.config == b.config and a.model_name == b.model_name == "unet.small"
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y)
    assert medmoe.create_model("mil.abmil.base").config == medmoe.create_model("abmil.base").config
    assert medmoe.create_model("vit.mosaic", datasets="pathmnist", device="meta").config.vit.embed_dim == 768
    assert medmoe.create_model("mamba_home", family="seg").model_name == "mamba_home.tiny"
    assert isinstance(medmoe.create_model("seg.mamba_home.tiny"), MambaHoME)


def test_model_family_of_names():
    assert model_family("abmil.base_mammoth.uni") == ("mil", "abmil.base_mammoth.uni")
    assert model_family("dftd") == ("mil", "dftd")  # a MIL alias
    assert model_family("seg.unet.small") == ("seg", "unet.small")
    assert model_family("SwinUNETR") == ("seg", "SwinUNETR")
    assert model_family("mosaic") == ("vit", "mosaic")
    assert model_family("vit.mosaic.tiny") == ("vit", "mosaic.tiny")
    assert FAMILIES == ("mil", "seg", "vit")


def test_list_models_filters_by_family():
    mil = medmoe.list_models()
    assert "abmil.base" in mil and not any(n.startswith(("unet", "mosaic")) for n in mil)  # unchanged default
    assert medmoe.list_models(family="mil") == mil
    assert medmoe.list_models(family="seg") == list_seg_models()
    assert medmoe.list_models(family="vit") == list_vit_models() == ["mosaic.base", "mosaic.tiny"]
    assert medmoe.list_models(family="all") == mil + list_seg_models() + list_vit_models()
    assert medmoe.list_models("unet*", family="seg") == ["unet.base", "unet.small"]
    for name in medmoe.list_models(family="seg"):  # every listed name builds (on the meta device: no memory)
        assert model_family(name)[0] == "seg"
    with pytest.raises(ValueError, match="unknown model family 'cnn'.*mil, seg, vit"):
        medmoe.list_models(family="cnn")


def test_an_unknown_name_lists_the_names_of_every_family():
    with pytest.raises(ValueError, match="unknown model 'zzzzzz'") as err:
        medmoe.create_model("zzzzzz")
    text = str(err.value)
    assert "abmil" in text and "unet" in text and "mosaic" in text and "--plugin" in text
    with pytest.raises(ValueError, match="did you mean 'unet'"):
        medmoe.create_model("unnet")
    with pytest.raises(ValueError, match="unknown segmentation model 'unet.huge'"):
        medmoe.create_model("unet.huge")
    with pytest.raises(ValueError, match="unknown ViT/MOSAIC model 'mosaic.huge'.*mosaic.base, mosaic.tiny"):
        medmoe.create_model("mosaic.huge")
    with pytest.raises(ValueError, match="unknown model family 'cnn'"):
        medmoe.create_model("abmil", family="cnn")


def test_a_name_of_another_family_is_refused_with_that_familys_names():
    with pytest.raises(ValueError, match="'abmil.base' is a MIL model, not a segmentation one.*unet"):
        medmoe.create_model("abmil.base", family="seg")
    with pytest.raises(ValueError, match="'unet' is a segmentation model, not a MIL one.*abmil"):
        medmoe.create_model("unet", family="mil")
    with pytest.raises(ValueError, match="is a segmentation model, not a MIL one"):
        medmoe.registry.parse_model_name("unet.small")  # what the MIL commands parse
    with pytest.raises(ValueError, match="one head per dataset"):
        medmoe.create_model("mosaic.tiny", num_classes=3, datasets="pathmnist")
    with pytest.raises(ValueError, match="in_dim applies to MIL models"):
        medmoe.create_model("unet.small", in_dim=12)
    with pytest.raises(ValueError, match="checkpoint_path applies to MIL models.*load_checkpoint"):
        medmoe.create_model("unet.small", checkpoint_path="x")


@pytest.mark.parametrize("name", ["unet", "mosaic", "mamba_home", "seg"])
def test_other_families_names_are_reserved_for_plugins(name):
    with pytest.raises(ValueError, match="is reserved"):
        register_model(name)(MILModel)
