"""Loading the references' checkpoints into medmoe models (MIL-Lab, FEATHER, the MAMMOTH fork, CLAM).

One entry point per need:

* :func:`load_weights` ``(model, path)`` fills a model you built (``medmoe.create_model(name,
  checkpoint_path=path)`` calls it);
* :func:`load_model` ``(path, name=None)`` builds the model and fills it (``medmoe mil convert``,
  ``eval``, ``predict`` and ``heatmap`` call it).

Both return / carry a :class:`LoadReport` of what was mapped, and raise :class:`CheckpointMismatchError`
listing every unknown, missing or mis-shaped tensor: nothing is dropped silently. Files are read
without pickle code execution (safetensors, ``torch.load(weights_only=True)``).

Supported key layouts live in :mod:`medmoe.interop.mil_keys` (``KEY_LAYOUTS``, a plain list: a new
reference adds a function there, or a module of its own for another model family).
"""

from .loader import head_keys, load_any_checkpoint, load_model, load_weights, read_any_checkpoint_info
from .mil_keys import KEY_LAYOUTS, KeyMapping, find_mammoth_prefixes
from .report import CheckpointMismatchError, LoadReport
from .sources import WeightSource, read_source

__all__ = [
    "KEY_LAYOUTS",
    "CheckpointMismatchError",
    "KeyMapping",
    "LoadReport",
    "WeightSource",
    "find_mammoth_prefixes",
    "head_keys",
    "load_any_checkpoint",
    "load_model",
    "load_weights",
    "read_any_checkpoint_info",
    "read_source",
]
