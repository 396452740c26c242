"""What ``medmoe mosaic train`` prepares before training: the preset's model and training configs with the
user's settings on top, and the synthetic demo data.

:func:`prepare_mosaic_training` gives a :class:`MosaicTrainingSetup`;
:func:`~medmoe.engine.mosaic.training.train_mosaic` trains it::

    setup = prepare_mosaic_training("medmoe-cpu", ["pathmnist", "organmnist3d"], vit="tiny",
                                    train_overrides={"rounds": 2})
    data = load_medmnist_data("medmnist/", setup.flags, setup.size)
    train_mosaic(setup.model_config, setup.train_config, data, "runs/mosaic", weights="ViT-B_16.npz")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...models.vit import MosaicConfig
from .presets import MosaicPreset
from .report import ParameterReport
from .training import MosaicTrainConfig

__all__ = [
    "DEMO_DATA_DIR",
    "SYNTHETIC_NOTE",
    "VIT_SIZES",
    "MosaicTrainingSetup",
    "check_vit_weights",
    "prepare_mosaic_training",
    "write_mosaic_demo_data",
]

#: The data note a run on :func:`write_mosaic_demo_data`'s files carries (reports and checkpoints show it).
SYNTHETIC_NOTE = (
    "SYNTHETIC data written by write_fake_medmnist (not MedMNIST images): numbers mean nothing clinically"
)
#: The folder inside the run folder that holds the demo's synthetic data (kept by ``overwrite``).
DEMO_DATA_DIR = "synthetic_data"
#: The backbones ``vit`` takes: ``base`` (ViT-B/16) and ``tiny`` (dim 32, depth 2: tests and demos).
VIT_SIZES = ("base", "tiny")


@dataclass
class MosaicTrainingSetup:
    """The configs of one MOSAIC run, as :func:`prepare_mosaic_training` chose them.

    Attributes:
        preset: the protocol every unset setting came from.
        flags: the MedMNIST datasets, in round-robin order.
        size: the stored 2-D image side (3-D datasets use ``min(size, 64)``).
        model_config: the :class:`~medmoe.models.vit.MosaicConfig` (one head per dataset).
        train_config: the :class:`~medmoe.engine.mosaic.training.MosaicTrainConfig`.
    """

    preset: MosaicPreset
    flags: list[str]
    size: int
    model_config: MosaicConfig
    train_config: MosaicTrainConfig

    def parameter_report(self) -> ParameterReport:
        """The model's parameter counts by group (backbone, tokenizer, adapters, heads), counted on a ``meta``
        model (no memory used)."""
        from ...models.vit import MosaicModel
        from .report import parameter_report

        return parameter_report(MosaicModel(self.model_config, device="meta"))


def check_vit_weights(weights: str | Path) -> None:
    """Refuse a ViT weight file that does not exist (``"none"``, a random backbone, passes).

    Raises:
        ValueError: the file is missing; the message says which files are accepted.
    """
    if str(weights).lower() != "none" and not Path(weights).is_file():
        from ...models.vit.weights import WEIGHTS_HELP

        raise ValueError(f"ViT weight file {str(weights)!r} does not exist. {WEIGHTS_HELP}")


def prepare_mosaic_training(
    preset: MosaicPreset | str,
    flags: Sequence[str],
    *,
    size: int | None = None,
    vit: str = "base",
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    augmentation: str | None = None,
    max_steps_per_dataset: int | None = None,
    accelerator: str = "auto",
) -> MosaicTrainingSetup:
    """The preset's model and training configs with the given settings on top.

    Args:
        preset: a :class:`~medmoe.engine.mosaic.presets.MosaicPreset` or its name.
        flags: MedMNIST datasets (already in the round-robin order wanted; see
            :func:`medmoe.data.medmnist.order_medmnist_flags`).
        size: the stored 2-D image side (28/64/128/224); default the preset's.
        vit: ``base`` (ViT-B/16) or ``tiny`` (:data:`VIT_SIZES`), with the preset's LayerNorm epsilon.
        model_overrides: :class:`~medmoe.models.vit.MosaicConfig` fields (``routing``, ``normalize_2d``,
            ``image_size_2d``, ``patch_norm_2d``, ``train_tokenizer_3d``, ``use_adapters``, ...); ``None``
            values keep the preset's.
        train_overrides: :class:`~medmoe.engine.mosaic.training.MosaicTrainConfig` fields; ``None`` values keep
            the preset's.
        augmentation: the 2-D student view: ``medmoe`` | ``reference`` | ``none`` (no augmentation); ``None``
            keeps the preset's.
        max_steps_per_dataset: cap on batches per dataset and round (quick runs).
        accelerator: Fabric accelerator.

    Returns:
        The :class:`MosaicTrainingSetup`.

    Raises:
        ValueError: an unknown preset, backbone, dataset or setting.
    """
    from ...models.vit import VisionTransformerConfig, build_mosaic_config
    from .presets import get_mosaic_preset

    chosen = get_mosaic_preset(preset) if isinstance(preset, str) else preset
    if vit not in VIT_SIZES:
        raise ValueError(f"vit must be base or tiny, got {vit!r}")
    size = chosen.size if size is None else size
    vit_cfg = (VisionTransformerConfig.base_patch16 if vit == "base" else VisionTransformerConfig.tiny_test)(
        norm_eps=chosen.norm_eps
    )
    model_kwargs = {**chosen.model, **{k: v for k, v in (model_overrides or {}).items() if v is not None}}
    model_cfg = build_mosaic_config(list(flags), size, vit=vit_cfg, **model_kwargs)
    train_kwargs = {**chosen.train, **{k: v for k, v in (train_overrides or {}).items() if v is not None}}
    if augmentation is not None:
        if augmentation == "none":
            train_kwargs["augment"] = False
        else:
            train_kwargs["augment"], train_kwargs["augmentation"] = True, augmentation
    train_cfg = MosaicTrainConfig(
        **train_kwargs, max_steps_per_dataset=max_steps_per_dataset, accelerator=accelerator
    )
    return MosaicTrainingSetup(chosen, list(flags), size, model_cfg, train_cfg)


def write_mosaic_demo_data(
    out: str | Path,
    flags: Sequence[str],
    size: int,
    n_per_split: int = 48,
    *,
    seed: int = 0,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write SYNTHETIC MedMNIST-shaped files (:func:`medmoe.data.medmnist.write_fake_medmnist`) into
    ``out/synthetic_data`` for a demo run in ``out``, after checking that ``out`` may take the run (nothing is
    written when it may not).

    Returns:
        The data folder.

    Raises:
        medmoe.engine.runs.RunFolderError: ``out`` holds another run or other files (and neither ``overwrite``
            nor ``resume``).
    """
    from ...data.medmnist import write_fake_medmnist
    from ..runs import check_run_folder

    out = Path(out)
    check_run_folder(out, resume=resume, overwrite=overwrite, allow=(DEMO_DATA_DIR,))
    data = out / DEMO_DATA_DIR
    write_fake_medmnist(data, list(flags), size, n_per_split, seed=seed)
    return data
