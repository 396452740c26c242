"""What ``medmoe seg train`` prepares before training: classes, channels, the held-out cases, the preset's
configs with the user's settings on top, and the network.

:func:`prepare_seg_training` turns a data set and the user's settings into a :class:`SegTrainingSetup`;
:func:`~medmoe.engine.seg.training.train_segmentation` then trains it::

    info = load_volume_cases("Task04_Hippocampus")
    setup = prepare_seg_training(info, preset="medmoe-cpu", train_overrides={"epochs": 5})
    train_segmentation(setup.model, setup.train_cases, setup.val_cases, setup.transform_config,
                       setup.train_config, "runs/seg", class_names=setup.class_names)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ...data.seg_transforms import SegTransformConfig
from ...data.volumes import SegDatasetInfo, VolumeCase
from .presets import SegPreset
from .training import SegTrainConfig

__all__ = ["SegTrainingSetup", "prepare_seg_training"]


@dataclass
class SegTrainingSetup:
    """Everything :func:`~medmoe.engine.seg.training.train_segmentation` needs but the network, as chosen for
    one run; :meth:`create_model` builds the network.

    Attributes:
        preset: the protocol every unset setting came from.
        model_name: the network's registry name (the given one, else the preset's).
        num_classes: classes including background.
        in_channels: image channels.
        transform_config: preprocessing and augmentation (dataset MRI statistics filled in when asked for).
        train_config: optimiser, schedule, validation and hardware settings.
        train_cases, val_cases: the seeded held-out split of the data set's cases.
        class_names: ``num_classes`` names, background first (``dataset.json``'s, else the class index).
        data_modality: the modality the data set declares (``dataset.json``; ``mri`` when it says nothing),
            to compare with the one used (``transform_config.modality``).
    """

    preset: SegPreset
    model_name: str
    num_classes: int
    in_channels: int
    transform_config: SegTransformConfig
    train_config: SegTrainConfig
    train_cases: list[VolumeCase]
    val_cases: list[VolumeCase]
    class_names: list[str]
    data_modality: str

    def create_model(self, **overrides: Any) -> nn.Module:
        """A freshly initialised :attr:`model_name` for :attr:`in_channels` and :attr:`num_classes`;
        ``overrides`` go to its config (``depths=[1, 1, 1, 1]``)."""
        from ...registry import create_model

        return create_model(self.model_name, self.num_classes, family="seg", in_channels=self.in_channels,
                            **overrides)


def prepare_seg_training(
    info: SegDatasetInfo,
    *,
    preset: str = "mamba-home-paper",
    model: str | None = None,
    num_classes: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    transform_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
) -> SegTrainingSetup:
    """Choose the classes, channels, split and configs of a segmentation run.

    Args:
        info: the data set (:func:`medmoe.data.volumes.load_volume_cases`).
        preset: the protocol every unset setting comes from (:func:`~medmoe.engine.seg.presets.list_seg_presets`).
        model: a segmentation model name (``mamba_home.tiny``, ``unet.small``, ...); default the preset's.
        num_classes: classes including background; default ``dataset.json``'s labels, else the largest label
            value in the label maps + 1 (``echo`` says so).
        val_fraction: fraction of the cases held out for validation (seeded by ``seed``; see
            :func:`medmoe.data.splits.holdout_split`).
        seed: the split's seed, also the training seed unless ``train_overrides`` sets another.
        transform_overrides, train_overrides: explicitly given :class:`SegTransformConfig` /
            :class:`SegTrainConfig` fields; ``None`` values are ignored (see
            :func:`~medmoe.engine.seg.presets.resolve_seg_preset`).
        echo: called with a note for the user when the classes are counted from the label maps.

    Returns:
        The :class:`SegTrainingSetup`.

    Raises:
        ValueError: an unknown preset, a bad setting, or a data set the checks refuse.
    """
    from ...data.seg_transforms import modality_from_names, with_dataset_stats
    from ...data.splits import holdout_split
    from ...data.volumes import count_label_classes, validate_case
    from .presets import resolve_seg_preset

    k = num_classes
    if k is None and info.num_classes is not None:
        k = int(info.num_classes)
    if k is None:
        k = count_label_classes(info.cases)
        if echo is not None:
            echo(f"num_classes not given and no dataset.json labels: using max label + 1 = {k}")
    in_channels = info.in_channels or validate_case(info.cases[0]).channels
    train_cases, val_cases = holdout_split(info.cases, val_fraction, seed)
    data_modality = modality_from_names(info.modality)
    chosen, tcfg, cfg = resolve_seg_preset(
        preset,
        len(train_cases),
        data_modality,
        transform_overrides,
        {"seed": seed, **(train_overrides or {})},
    )
    tcfg = with_dataset_stats(tcfg, train_cases)  # mri_stats=dataset: statistics of the training volumes
    names = [info.label_names.get(i, str(i)) for i in range(k)]
    return SegTrainingSetup(
        chosen, model or chosen.model, k, in_channels, tcfg, cfg, train_cases, val_cases, names, data_modality
    )
