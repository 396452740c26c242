"""AdaptFormer adapters and a hard-routed mixture of specialist adapters (MOSAIC, MICCAI 2026).

Notation: ``b`` batch, ``n`` tokens, ``d`` features, ``r`` adapter bottleneck.

:class:`Adapter` (AdaptFormer, Chen et al., NeurIPS 2022, with MOSAIC's extra input LayerNorm) runs in
parallel to a transformer block's MLP::

    n = norm2(x)
    x = x + mlp(n) + adapter(n),   adapter(n) = s * up(relu(down(LN(n))))

with scale ``s = 0.1`` and a zero-initialised up-projection, so a freshly built adapter outputs exactly
zero and the frozen backbone's function is unchanged at the start of training.

:class:`MixtureOfSpecialists` holds one adapter per *specialist* and routes every sample to one of
them by its dataset (hard routing, no learnable gate). The dataset -> specialist assignment is a
:class:`RoutingTable`; :data:`ROUTING_TABLES` holds

* ``"mosaic"`` (default, the paper's ``v2_moe``): A (r = 64) for RGB/texture datasets (Path, Blood,
  Tissue, Derma, Retina), B (r = 96) for grayscale radiology (Chest, Pneumonia, Breast, OCT,
  OrganA/C/S), C (r = 192) for the six 3-D volumes;
* ``"v1"`` (the paper's ablation): one 2-D and one 3-D adapter, both r = 64, routed by input rank;
* ``"shared"``: a single adapter (r = 64) shared by every dataset, for comparison.

Datasets that a table does not list are routed by a fallback rule (3-D -> the table's 3-D specialist,
2-D RGB -> its RGB specialist, 2-D grayscale -> its grayscale specialist), so user datasets work too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .backend import make_dropout, make_linear
from .checks import check_positive_ints

__all__ = [
    "ROUTING_TABLES",
    "Adapter",
    "MixtureOfSpecialists",
    "RoutingTable",
    "Specialist",
    "get_routing_table",
]


class Adapter(nn.Module):
    """Bottleneck adapter ``s * up(relu(down(LN(x))))`` (AdaptFormer with an input LayerNorm).

    Args:
        dim: token features ``d``.
        bottleneck: hidden size ``r``.
        scale: output scale ``s`` (AdaptFormer: 0.1).
        dropout: dropout on the up-projection's output.
        layer_norm: apply a LayerNorm to the input first (MOSAIC: yes; original AdaptFormer: no).
        device, dtype: where to build the parameters (``"meta"`` to count them without memory).

    Initialisation ("lora"): ``down`` kaiming-uniform (a = sqrt(5)) with zero bias, ``up`` all zeros,
    so the adapter starts as the zero function.

    Shapes:
        ``x: (..., d)`` -> ``(..., d)``.
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int,
        *,
        scale: float = 0.1,
        dropout: float = 0.0,
        layer_norm: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_ints("Adapter", dim=dim, bottleneck=bottleneck)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Adapter: dropout must be in [0, 1), got {dropout!r}")
        dd = {"device": device, "dtype": dtype}
        self.dim, self.bottleneck, self.scale = dim, bottleneck, float(scale)
        self.norm = nn.LayerNorm(dim, **dd) if layer_norm else nn.Identity()
        self.down = make_linear(dim, bottleneck, **dd)
        self.act = nn.ReLU()
        self.up = make_linear(bottleneck, dim, **dd)
        self.dropout = make_dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LoRA-style init: ``down`` kaiming-uniform, zero biases, ``up`` zero (output starts at 0)."""
        if self.down.weight.is_meta:
            return
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.up(self.act(self.down(self.norm(x))))) * self.scale

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bottleneck={self.bottleneck}, scale={self.scale}"


@dataclass(frozen=True)
class Specialist:
    """One specialist adapter of a :class:`RoutingTable`.

    Attributes:
        bottleneck: adapter hidden size ``r``.
        spatial_dims: 2 or 3: the modality it serves (decides its EMA momentum in MOSAIC training).
        description: human-readable domain.
    """

    bottleneck: int
    spatial_dims: int = 2
    description: str = ""


@dataclass(frozen=True)
class RoutingTable:
    """Which specialist adapter serves which dataset.

    Attributes:
        name: table name.
        specialists: specialist name -> :class:`Specialist`.
        routes: dataset name (MedMNIST flag, e.g. ``"pathmnist"``) -> specialist name.
        fallback_rgb, fallback_gray, fallback_3d: specialists for datasets not in ``routes``.
    """

    name: str
    specialists: Mapping[str, Specialist]
    routes: Mapping[str, str] = field(default_factory=dict)
    fallback_rgb: str = ""
    fallback_gray: str = ""
    fallback_3d: str = ""

    def __post_init__(self) -> None:
        if not self.specialists:
            raise ValueError(f"routing table {self.name!r} has no specialists")
        known = set(self.specialists)
        for dataset, spec in self.routes.items():
            if spec not in known:
                raise ValueError(
                    f"routing table {self.name!r} routes {dataset!r} to unknown specialist {spec!r}; "
                    f"specialists: {sorted(known)}"
                )
        for attr in ("fallback_rgb", "fallback_gray", "fallback_3d"):
            value = getattr(self, attr)
            if value and value not in known:
                raise ValueError(f"routing table {self.name!r}: {attr}={value!r} is not a specialist")

    def route(self, dataset: str, *, spatial_dims: int | None = None, channels: int | None = None) -> str:
        """The specialist for ``dataset``; unlisted datasets use the fallback rule.

        Args:
            dataset: dataset name.
            spatial_dims: 2 or 3, needed only for datasets not in ``routes``.
            channels: input channels (1 = grayscale, 3 = RGB), needed only for unlisted 2-D datasets.
        """
        if dataset in self.routes:
            return self.routes[dataset]
        if len(self.specialists) == 1:
            return next(iter(self.specialists))
        if spatial_dims == 3 and self.fallback_3d:
            return self.fallback_3d
        if spatial_dims == 2:
            pick = self.fallback_rgb if channels == 3 else self.fallback_gray if channels == 1 else ""
            if pick:
                return pick
        raise ValueError(
            f"routing table {self.name!r} has no route for dataset {dataset!r} "
            f"(spatial_dims={spatial_dims}, channels={channels}); known datasets: {sorted(self.routes)}"
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "specialists": {
                k: {"bottleneck": v.bottleneck, "spatial_dims": v.spatial_dims, "description": v.description}
                for k, v in self.specialists.items()
            },
            "routes": dict(self.routes),
            "fallback_rgb": self.fallback_rgb,
            "fallback_gray": self.fallback_gray,
            "fallback_3d": self.fallback_3d,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> RoutingTable:
        specs = {k: Specialist(**v) for k, v in data["specialists"].items()}
        return cls(
            name=data["name"],
            specialists=specs,
            routes=dict(data.get("routes", {})),
            fallback_rgb=data.get("fallback_rgb", ""),
            fallback_gray=data.get("fallback_gray", ""),
            fallback_3d=data.get("fallback_3d", ""),
        )


_RGB_TEXTURE = ("pathmnist", "bloodmnist", "tissuemnist", "dermamnist", "retinamnist")
_GRAY_RADIOLOGY = (
    "chestmnist",
    "pneumoniamnist",
    "breastmnist",
    "octmnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)
_VOLUMES = (
    "organmnist3d",
    "nodulemnist3d",
    "adrenalmnist3d",
    "vesselmnist3d",
    "fracturemnist3d",
    "synapsemnist3d",
)

#: Built-in routing tables: ``"mosaic"`` (paper default, A/B/C), ``"v1"`` (2-D/3-D), ``"shared"``.
ROUTING_TABLES: dict[str, RoutingTable] = {
    "mosaic": RoutingTable(
        name="mosaic",
        specialists={
            "A": Specialist(64, 2, "bio-medical RGB / texture (Path, Blood, Tissue, Derma, Retina)"),
            "B": Specialist(96, 2, "grayscale radiology / shape (Chest, Pneumonia, Breast, OCT, Organ A/C/S)"),
            "C": Specialist(192, 3, "volumetric 3-D (the six *MNIST3D datasets)"),
        },
        routes={
            **{d: "A" for d in _RGB_TEXTURE},
            **{d: "B" for d in _GRAY_RADIOLOGY},
            **{d: "C" for d in _VOLUMES},
        },
        fallback_rgb="A",
        fallback_gray="B",
        fallback_3d="C",
    ),
    "v1": RoutingTable(
        name="v1",
        specialists={"2d": Specialist(64, 2, "every 2-D dataset"), "3d": Specialist(64, 3, "every 3-D dataset")},
        routes={**{d: "2d" for d in _RGB_TEXTURE + _GRAY_RADIOLOGY}, **{d: "3d" for d in _VOLUMES}},
        fallback_rgb="2d",
        fallback_gray="2d",
        fallback_3d="3d",
    ),
    "shared": RoutingTable(
        name="shared",
        specialists={"shared": Specialist(64, 2, "one adapter for every dataset")},
    ),
}


def get_routing_table(table: str | RoutingTable | Mapping) -> RoutingTable:
    """A :class:`RoutingTable` from a built-in name, a table, or its :meth:`RoutingTable.to_dict` form."""
    if isinstance(table, RoutingTable):
        return table
    if isinstance(table, Mapping):
        return RoutingTable.from_dict(table)
    if table not in ROUTING_TABLES:
        raise ValueError(f"unknown routing table {table!r}; choose one of {sorted(ROUTING_TABLES)}")
    return ROUTING_TABLES[table]


class MixtureOfSpecialists(nn.Module):
    """One :class:`Adapter` per specialist, hard-routed by name (no gate).

    Args:
        dim: token features ``d``.
        table: a :class:`RoutingTable` or a built-in name (``"mosaic"``, ``"v1"``, ``"shared"``).
        scale, dropout, layer_norm: forwarded to every :class:`Adapter`.
        device, dtype: where to build the parameters.

    Parameters are named ``specialists.<name>.{norm,down,up}.*``.

    Shapes:
        ``x: (b, n, d)``; ``specialist`` is one name for the whole batch or a sequence of ``b`` names
        (samples are grouped by specialist, each group runs its adapter once) -> ``(b, n, d)``.
    """

    def __init__(
        self,
        dim: int,
        table: str | RoutingTable = "mosaic",
        *,
        scale: float = 0.1,
        dropout: float = 0.0,
        layer_norm: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.table = get_routing_table(table)
        self.specialists = nn.ModuleDict(
            {
                name: Adapter(
                    dim, spec.bottleneck, scale=scale, dropout=dropout, layer_norm=layer_norm,
                    device=device, dtype=dtype,
                )
                for name, spec in self.table.specialists.items()
            }
        )

    def _check(self, name: str) -> None:
        if name not in self.specialists:
            raise ValueError(f"unknown specialist {name!r}; this mixture has {sorted(self.specialists)}")

    def forward(self, x: Tensor, specialist: str | Sequence[str]) -> Tensor:
        if isinstance(specialist, str):
            self._check(specialist)
            return self.specialists[specialist](x)
        names = list(specialist)
        if len(names) != x.shape[0]:
            raise ValueError(f"got {len(names)} specialist names for a batch of {x.shape[0]}")
        for name in set(names):
            self._check(name)
        if len(set(names)) == 1:
            return self.specialists[names[0]](x)
        out = x.new_zeros(x.shape)
        for name in sorted(set(names)):
            idx = torch.tensor([i for i, n in enumerate(names) if n == name], device=x.device)
            out = out.index_copy(0, idx, self.specialists[name](x.index_select(0, idx)))
        return out

    def extra_repr(self) -> str:
        return f"table={self.table.name!r}"
