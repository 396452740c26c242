"""One model registry for every family: MIL aggregators, 3-D segmentation networks, ViT/MOSAIC models.

``create_model(name, ...)`` builds a model of any family; the family comes from the name:

| family | names | built by |
|---|---|---|
| ``"mil"`` | every registered MIL model, MIL-Lab's grammar below (``abmil.base_mammoth.uni``) | this module |
| ``"seg"`` | ``mamba_home[.tiny/.paper]``, ``unet[.base/.small]``, ``segresnet[.base/.small]``, ``swinunetr`` | :func:`medmoe.models.seg.create_seg_model` |
| ``"vit"`` | ``mosaic`` (= ``mosaic.base``, ViT-B/16), ``mosaic.tiny`` | :func:`medmoe.models.vit.create_mosaic_model` |

A family prefix (``mil.``, ``seg.``, ``vit.``: ``seg.unet.small``, ``vit.mosaic``) names the family
explicitly; ``family=`` makes a caller that needs one family refuse the others. The segmentation and MOSAIC
names are reserved: no MIL model can be registered under them. :func:`list_models` lists the MIL configs
(as always) or, with ``family=``, another family's names or all of them. Checkpoints record the family
(``config.json``'s ``family``) and load through :func:`medmoe.engine.load_checkpoint`.

MIL names
---------

``create_model('<model>.<config>.<encoder>[.<task>]', num_classes=2, **overrides)``: short names are
padded with the defaults ``base`` (config), ``uni`` (encoder) and ``none`` (task), so ``abmil``,
``abmil.base`` and ``abmil.base.uni`` name the same model. The encoder only sets ``in_dim``
(:data:`ENCODER_DIMS`); pass ``in_dim=`` for any other feature extractor.

Configs are YAML files shipped inside the package (``medmoe/configs/mil/<model>/<config>.yaml``) or
dicts given to :func:`register_model` by code outside the package.

Models of your own, without forking medmoe: decorate the class with :func:`register_model` in a module
and make medmoe import it, by any of

* an entry point of an installed package (``pyproject.toml``:
  ``[project.entry-points."medmoe.mil_models"] mymil = "mypkg.models"``), found automatically;
* the environment variable ``MEDMOE_PLUGINS="mypkg.models,/path/to/my_model.py"`` (inherited by the
  worker processes of ``--jobs``);
* ``medmoe --plugin mypkg.models mil train -m mymil ...`` on the command line, or :func:`load_plugin`.

Every command then accepts the name (``mil train``, ``compare``, ``eval`` of its checkpoints, ...).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.util
import os
import pkgutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError, did_you_mean
from .model_size import build_within_limit, check_model_size

__all__ = [
    "ENCODER_DIMS",
    "FAMILIES",
    "ModelEntry",
    "ModelName",
    "check_model_fits",
    "create_model",
    "get_config",
    "list_models",
    "load_plugin",
    "model_family",
    "parse_model_name",
    "register_model",
    "register_model_alias",
]

#: Encoder name -> instance feature size (MIL-Lab's ``ENCODER_DIM_MAPPING``, TRIDENT names).
ENCODER_DIMS: dict[str, int] = {
    "uni": 1024,
    "uni_v2": 1536,
    "ctranspath": 768,
    "conch_v1": 512,
    "conch_v15": 768,
    "gigapath": 1536,
    "resnet50": 1024,
    "virchow": 2560,
    "virchow2": 2560,
    "phikon": 768,
    "phikon_v2": 1024,
    "hoptimus": 1536,
    "hoptimus1": 1536,
    "musk": 1024,
}
#: Names used before MIL-Lab PR #17 (renamed to match TRIDENT).
_ENCODER_ALIASES = {"conch": "conch_v1", "phikon2": "phikon_v2"}

DEFAULT_CONFIG, DEFAULT_ENCODER, DEFAULT_TASK = "base", "uni", "none"

#: The model families, as ``config.json`` records them.
FAMILIES = ("mil", "seg", "vit")
#: How messages name each family.
FAMILY_TITLES = {"mil": "MIL", "seg": "segmentation", "vit": "ViT/MOSAIC"}


@dataclass(frozen=True)
class ModelName:
    """A parsed model name: ``model.config.encoder.task``."""

    model: str
    config: str = DEFAULT_CONFIG
    encoder: str = DEFAULT_ENCODER
    task: str = DEFAULT_TASK

    def __str__(self) -> str:
        return f"{self.model}.{self.config}.{self.encoder}.{self.task}"


@dataclass
class ModelEntry:
    """A registered model: its class, config class and named configs (dicts, YAML loaded lazily)."""

    name: str
    model_cls: type
    config_cls: type
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""

    def config_names(self) -> list[str]:
        names = set(self.configs) | set(_packaged_config_names(self.name))
        return sorted(names)

    def config_dict(self, config: str) -> dict[str, Any]:
        if config in self.configs:
            return dict(self.configs[config])
        packaged = _read_packaged_config(self.name, config)
        if packaged is None:
            renamed = RENAMED_CONFIGS.get(f"{self.name}.{config}")
            if renamed is not None:
                raise ValueError(f"{self.name}.{config} was renamed: {renamed}")
            hint = did_you_mean(config, self.config_names())
            raise InputError(f"model {self.name!r} has no config {config!r}; {hint + ' ' if hint else ''}its "
                             f"configs: {', '.join(self.config_names())}")
        return packaged


#: Config names that no longer exist, and what to use (issue 24: a name that exists in MIL-Lab or the MAMMOTH
#: fork builds that model; medmoe's own variants got names of their own).
RENAMED_CONFIGS: dict[str, str] = {
    "clam.base_svm": "MIL-Lab's CLAM with the smooth top-1 SVM instance loss is now clam.base "
                     "(the cross-entropy CLAM is clam.base_ce)",
    "rrt.base_millab": "MIL-Lab's RRT is now rrt.base (the paper's RRT is rrt.base_paper)",
}

_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}
_DISCOVERED = False
_PLUGINS_LOADED: set[str] = set()

#: Entry-point group through which installed packages add MIL models (each entry names a module).
PLUGIN_GROUP = "medmoe.mil_models"
#: Environment variable: comma-separated modules or ``.py`` files imported for their models.
PLUGIN_ENV = "MEDMOE_PLUGINS"
_UNKNOWN_HINT = "another package's model: its entry point, medmoe --plugin MODULE or MEDMOE_PLUGINS"


def unknown_model_message(model: str) -> str:
    """``unknown model 'abmill'; did you mean 'abmil'?`` (all names when none is close) and the plugin hint."""
    found = did_you_mean(model, _REGISTRY) or f"the models are {', '.join(sorted(_REGISTRY))}"
    return f"unknown model {model!r}; {found} ({_UNKNOWN_HINT})"


def register_model(
    name: str, *, config_cls: type | None = None, configs: dict[str, dict[str, Any]] | None = None,
    description: str = "",
) -> Callable[[type], type]:
    """Class decorator registering a MIL model under ``name``.

    Args:
        name: short name used in model strings (lower case, no dots).
        config_cls: config dataclass; defaults to the class attribute ``config_class``.
        configs: named configs as dicts (merged with YAML files shipped under ``configs/mil/<name>``).
            A model registered from outside the package passes its configs here; ``base`` is required
            when no YAML exists.
        description: one line for ``list_models``/``medmoe mil models``.
    """
    if not name or "." in name or name != name.lower():
        raise ValueError(f"model names are lower case without dots, got {name!r}")
    _check_not_reserved(name)

    def decorator(cls: type) -> type:
        cfg_cls = config_cls or getattr(cls, "config_class", None)
        if cfg_cls is None or not dataclasses.is_dataclass(cfg_cls):
            raise ValueError(f"register_model({name!r}): a dataclass config_cls is required")
        if name in _REGISTRY and _REGISTRY[name].model_cls is not cls:
            raise ValueError(f"a model named {name!r} is already registered ({_REGISTRY[name].model_cls})")
        _REGISTRY[name] = ModelEntry(name, cls, cfg_cls, dict(configs or {}), description or (cls.__doc__ or "")
                                     .strip().split("\n")[0])
        return cls

    return decorator


def register_model_alias(alias: str, name: str) -> None:
    """Accept ``alias`` wherever the registered model ``name`` is accepted (not listed separately)."""
    if alias in _REGISTRY:
        raise ValueError(f"{alias!r} is already a registered model name")
    _check_not_reserved(alias)
    _ALIASES[alias] = name


def _other_family(name: str) -> str | None:
    """``"seg"`` / ``"vit"`` when ``name`` is a segmentation / MOSAIC model name, else ``None``."""
    from .models.seg.baselines import is_seg_model_name
    from .models.vit.mosaic_config import is_vit_model_name

    if is_seg_model_name(name):
        return "seg"
    if is_vit_model_name(name):
        return "vit"
    return None


def _check_not_reserved(name: str) -> None:
    other = _other_family(name) or (name if name in FAMILIES else None)
    if other is not None:
        raise ValueError(f"{name!r} is reserved (a {FAMILY_TITLES.get(other, 'family')} name of medmoe's "
                         "registry); register the MIL model under another name")


def load_plugin(spec: str) -> None:
    """Import ``spec`` (a dotted module name, or a path to a ``.py`` file) so that the models it decorates
    with :func:`register_model` are registered; a spec already loaded is skipped.

    Raises:
        ValueError: the module cannot be found or fails to import (the cause is chained).
    """
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    key = str(path.resolve()) if spec.endswith(".py") else spec
    if not spec or key in _PLUGINS_LOADED:
        return
    _discover()  # the built-in models first: a plugin may build on them
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            name = f"medmoe_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"{path} is not an importable Python file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except Exception as err:
        raise ValueError(f"cannot load the medmoe plugin {spec!r}: {type(err).__name__}: {err}") from err
    _PLUGINS_LOADED.add(key)


def _discover() -> None:
    """Import every module of ``medmoe.models.mil`` once so their ``@register_model`` decorators run, then
    the plugins: entry points of group :data:`PLUGIN_GROUP` (a broken one is skipped with a warning) and
    the modules named in ``$MEDMOE_PLUGINS``."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module("medmoe.models.mil")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"medmoe.models.mil.{info.name}")
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        if ep.value in _PLUGINS_LOADED:
            continue
        try:
            ep.load()
        except Exception as err:  # noqa: BLE001 - an unrelated broken package must not break medmoe
            warnings.warn(f"skipped the medmoe plugin {ep.name!r} ({ep.value}): {type(err).__name__}: {err}",
                          stacklevel=2)
        else:
            _PLUGINS_LOADED.add(ep.value)
    for spec in os.environ.get(PLUGIN_ENV, "").split(","):
        if spec.strip():
            load_plugin(spec)


def _config_root():  # type: ignore[no-untyped-def]
    return resources.files("medmoe") / "configs" / "mil"


def _packaged_config_names(model: str) -> list[str]:
    folder = _config_root() / model
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_packaged_config(model: str, config: str) -> dict[str, Any] | None:
    path = _config_root() / model / f"{config}.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {model}/{config}.yaml must hold a mapping, got {type(data).__name__}")
    return data


def parse_model_name(name: str) -> ModelName:
    """Split ``'abmil.base_mammoth.uni'`` into its parts, padding defaults; validates model and encoder."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string like 'abmil.base.uni', got {name!r}")
    parts = name.strip().split(".")
    if len(parts) > 4 or any(not p for p in parts):
        raise ValueError(f"model name {name!r} must look like '<model>[.<config>[.<encoder>[.<task>]]]'")
    _discover()
    parts[0] = _ALIASES.get(parts[0], parts[0])
    parsed = ModelName(*parts)
    if parsed.model not in _REGISTRY:
        other = _other_family(name.strip())
        if other is not None:
            raise InputError(f"{name.strip()!r} is a {FAMILY_TITLES[other]} model, not a MIL one; the MIL models "
                             f"are {', '.join(sorted(_REGISTRY))}")
        raise InputError(unknown_model_message(parsed.model))
    if len(parts) >= 3 and _known_encoder(parsed.encoder) is None:
        # A typo here would otherwise pass silently whenever in_dim comes from the data.
        hint = did_you_mean(parsed.encoder, sorted(set(ENCODER_DIMS) | set(_ENCODER_ALIASES)))
        raise InputError(
            f"unknown encoder {parsed.encoder!r} in model name {name.strip()!r}; "
            f"{hint + ' ' if hint else ''}the encoders are {', '.join(sorted(ENCODER_DIMS))}. "
            f"For features of another extractor leave the encoder out ({parsed.model}.{parsed.config}) "
            "and give in_dim (the CLI takes it from the features)."
        )
    return parsed


def model_family(name: str, family: str | None = None) -> tuple[str, str]:
    """The family of a model name and the name without its family prefix: ``'seg.unet.small'`` ->
    ``('seg', 'unet.small')``, ``'abmil.base'`` -> ``('mil', 'abmil.base')``, ``'mosaic'`` -> ``('vit', 'mosaic')``.

    Args:
        name: a model name, optionally prefixed with its family (``mil.``, ``seg.``, ``vit.``).
        family: the family the caller needs; a name of another family raises.

    Raises:
        ValueError: an unknown ``family``, a name of another family than ``family``, or a name no family
            knows (the message lists the names).
    """
    if family is not None and family not in FAMILIES:
        raise InputError(f"unknown model family {family!r}; the families are {', '.join(FAMILIES)}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string like 'abmil.base.uni', got {name!r}")
    text = name.strip()
    head, _, rest = text.partition(".")
    if head in FAMILIES and rest:
        found: str | None = head
        text = rest
    else:
        found = _other_family(text)
        if found is None:
            _discover()
            found = "mil" if _ALIASES.get(head, head) in _REGISTRY else None
    if found is None:
        if family is not None:
            return family, text  # the family's own factory names the closest of its models
        raise InputError(_unknown_any_family_message(head))
    if family is not None and found != family:
        raise InputError(f"{name!r} is a {FAMILY_TITLES[found]} model, not a {FAMILY_TITLES[family]} one; the "
                         f"{FAMILY_TITLES[family]} models are {', '.join(_short_names(family))}")
    return found, text


def _short_names(family: str) -> list[str]:
    """A family's model names without configs/sizes (for messages)."""
    if family == "mil":
        _discover()
        return sorted(_REGISTRY)
    return sorted({n.split(".")[0] for n in list_models(family=family)})


def _unknown_any_family_message(model: str) -> str:
    """``unknown model 'unnet'; did you mean 'unet'?`` over every family (all names when none is close)."""
    everything = [n for fam in FAMILIES for n in _short_names(fam)]
    found = did_you_mean(model, everything) or "the models are " + "; ".join(
        f"{FAMILY_TITLES[fam]}: {', '.join(_short_names(fam))}" for fam in FAMILIES)
    return f"unknown model {model!r}; {found} ({_UNKNOWN_HINT})"


def _known_encoder(encoder: str) -> str | None:
    """The :data:`ENCODER_DIMS` key ``encoder`` (or its alias) names, or ``None``."""
    key = _ENCODER_ALIASES.get(encoder, encoder)
    return key if key in ENCODER_DIMS else None


def encoder_dim(encoder: str) -> int:
    """Feature size of a named encoder (raises ``ValueError`` listing the known names)."""
    key = _known_encoder(encoder)
    if key is None:
        raise ValueError(
            f"unknown encoder {encoder!r}; known: {sorted(ENCODER_DIMS)}. "
            "For another feature extractor pass in_dim=<feature size>."
        )
    return ENCODER_DIMS[key]


def get_config(name: str, num_classes: int = 2, in_dim: int | None = None, **overrides: Any) -> Any:
    """Build the typed config for a model name (see :func:`create_model` for the arguments)."""
    parsed = parse_model_name(name)
    entry = _REGISTRY[parsed.model]
    data = entry.config_dict(parsed.config)
    data["in_dim"] = int(in_dim) if in_dim is not None else encoder_dim(parsed.encoder)
    data["num_classes"] = num_classes
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"config {parsed.model}.{parsed.config} has unknown keys {unknown}; fields: {sorted(fields)}")
    for key, value in overrides.items():
        if key not in fields:
            hint = did_you_mean(key, fields)
            raise InputError(f"{parsed.model} has no setting {key!r}; {hint + ' ' if hint else ''}valid settings: "
                             f"{sorted(fields)}")
        if key == "patch_embed_args" and isinstance(value, dict):
            merged = dict(data.get("patch_embed_args") or {})
            merged.update(value)
            value = merged
        data[key] = value
    return entry.config_cls(**data)


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    in_dim: int | None = None,
    checkpoint_path: str | None = None,
    reinit_head: bool = False,
    family: str | None = None,
    **overrides: Any,
) -> Any:
    """Create a model of any family by name: MIL (MIL-Lab's grammar), segmentation or ViT/MOSAIC.

    Examples: ``create_model('abmil.base_mammoth.uni', num_classes=3)``,
    ``create_model('unet.small', num_classes=3, in_channels=1)`` (or ``'seg.unet.small'``),
    ``create_model('mosaic.tiny', datasets=['pathmnist', 'organmnist3d'], size=28)``.

    Args:
        name: MIL: ``'<model>.<config>.<encoder>[.<task>]'``, e.g. ``'abmil.base_mammoth.uni'``;
            segmentation: ``'mamba_home.tiny'``, ``'unet.small'``, ... (:func:`medmoe.models.seg.create_seg_model`);
            ViT/MOSAIC: ``'mosaic'``, ``'mosaic.tiny'`` (:func:`medmoe.models.vit.create_mosaic_model`). A
            ``mil.`` / ``seg.`` / ``vit.`` prefix names the family explicitly.
        num_classes: MIL: bag classes (default 2, as MIL-Lab); segmentation: output classes including the
            background (default 2); not for MOSAIC (one head per dataset: ``datasets=``).
        in_dim: MIL only: feature size; overrides the encoder's.
        checkpoint_path: optional weights, loaded through :func:`medmoe.interop.load_weights`: a medmoe
            checkpoint folder, a MIL-Lab / MAMMOTH-fork / FEATHER state dict (``.safetensors``, ``.bin``,
            ``.pth`` or a Hugging Face folder), a CLAM-repository checkpoint, or a bare Mammoth layer
            (loaded into ``patch_embed``). The report of what was mapped is ``model.load_report``; a
            file without a classification head (FEATHER) leaves a fresh head, with a warning; any other
            unknown or missing tensor is an error that lists it.
        reinit_head: with ``checkpoint_path``: do not load the file's classification head (fine-tuning on
            other classes); the report lists it.
        family: the family the caller needs (``"mil"``, ``"seg"``, ``"vit"``); a name of another family is a
            ``ValueError``. ``None`` (default): the name decides.
        **overrides: MIL: any config field, e.g. ``dropout=0.1``, ``patch_embed='mammoth'``,
            ``patch_embed_args={'num_experts': 8}`` (merged into the config's); segmentation: ``in_channels``
            (default 1) and the network's settings; MOSAIC: ``datasets``, ``size`` and any
            :class:`~medmoe.models.vit.MosaicConfig` field.

    Raises:
        ValueError: an unknown name (the message lists the names of every family), a name of another
            family than ``family``, or a setting the model does not have.

    Hub weights (a task other than ``none``) cannot be downloaded by medmoe; download them yourself and
    pass ``checkpoint_path``.
    """
    found, name = model_family(name, family)
    if found != "mil":
        return _create_other_family(found, name, num_classes, in_dim, checkpoint_path, reinit_head, overrides)
    num_classes = 2 if num_classes is None else num_classes
    parsed = parse_model_name(name)
    if parsed.task != DEFAULT_TASK and checkpoint_path is None:
        raise ValueError(
            f"{name!r} names pretrained weights ({parsed.task}); medmoe does not download hub weights. "
            "Fetch them yourself and pass checkpoint_path=..."
        )
    config = get_config(name, num_classes=num_classes, in_dim=in_dim, **overrides)
    # medmoe's models build the layer classes of the backend in force themselves (medmoe.nn.backend.make_linear /
    # make_dropout, read at construction); a plugin's model is built as its author wrote it
    model_cls = _REGISTRY[parsed.model].model_cls
    model = build_within_limit(lambda: model_cls(config), f"model {name}")
    model.model_name = f"{parsed.model}.{parsed.config}"
    if checkpoint_path is not None:
        from .interop import load_weights

        model.load_report = load_weights(model, checkpoint_path, reinit_head=reinit_head)
    return model


def _create_other_family(family: str, name: str, num_classes: int | None, in_dim: int | None,
                         checkpoint_path: str | None, reinit_head: bool, overrides: dict[str, Any]) -> Any:
    """A segmentation or ViT/MOSAIC model (see :func:`create_model`)."""
    title = FAMILY_TITLES[family]
    for arg, value in (("in_dim", in_dim), ("checkpoint_path", checkpoint_path), ("reinit_head", reinit_head)):
        if value not in (None, False):
            raise InputError(f"{arg} applies to MIL models; {name!r} is a {title} model"
                             + (" (load a saved one with medmoe.engine.load_checkpoint)" if arg != "in_dim" else ""))
    if family == "seg":
        from .models.seg import create_seg_model

        in_channels = overrides.pop("in_channels", 1)
        return create_seg_model(name, in_channels=in_channels, num_classes=2 if num_classes is None else num_classes,
                                **overrides)
    if num_classes is not None:
        raise InputError(f"{name!r} is a MOSAIC model with one head per dataset: choose them with datasets=..., "
                         "not num_classes")
    from .models.vit import create_mosaic_model

    return create_mosaic_model(name, **overrides)


def check_model_fits(name: str, num_classes: int = 2, in_dim: int | None = None, **overrides: Any) -> None:
    """Validate a model name and its overrides and check, without allocating (on the ``meta`` device), that
    its weights fit the memory limit (:mod:`medmoe.model_size`); raises ``ValueError``s as :func:`create_model`."""
    config = get_config(name, num_classes=num_classes, in_dim=in_dim, **overrides)
    model_cls = _REGISTRY[parse_model_name(name).model].model_cls
    check_model_size(lambda: model_cls(config), f"model {name}")


def list_models(pattern: str = "*", family: str = "mil") -> list[str]:
    """Model names matching a glob ``pattern`` (e.g. ``'*mammoth*'``), each accepted by :func:`create_model`.

    Args:
        pattern: glob over the names.
        family: ``"mil"`` (default: the registered ``model.config`` names, plugins included), ``"seg"``
            (``arch.size``), ``"vit"`` (``mosaic.<backbone>``) or ``"all"`` (every family, in that order).
    """
    if family == "all":
        return [n for fam in FAMILIES for n in list_models(pattern, fam)]
    if family == "seg":
        from .models.seg import list_seg_models

        names = list_seg_models()
    elif family == "vit":
        from .models.vit import list_vit_models

        names = list_vit_models()
    elif family == "mil":
        _discover()
        names = [f"{m}.{c}" for m, entry in sorted(_REGISTRY.items()) for c in entry.config_names()]
    else:
        raise InputError(f"unknown model family {family!r}; the families are {', '.join(FAMILIES)} (or 'all')")
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def get_entry(model: str) -> ModelEntry:
    """The registry entry of a short model name (aliases resolved)."""
    _discover()
    model = _ALIASES.get(model, model)
    if model not in _REGISTRY:
        raise InputError(unknown_model_message(model))
    return _REGISTRY[model]
