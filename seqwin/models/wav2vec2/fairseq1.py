"""Reading fairseq (v1) wav2vec 2.0 checkpoints without executing their pickles.

fairseq1 checkpoints pickle their training config as an ``argparse.Namespace`` (``args``, older) or an omegaconf
``DictConfig`` (``cfg``). ``torch.load(weights_only=True)`` refuses those classes, and loading with
``weights_only=False`` would run arbitrary code from the file. :func:`read_checkpoint` first tries
``weights_only=True``; if the file holds other classes it loads it with an unpickler that only resolves torch's
own weights-only allow-list and a few inert builtins, and turns every other class into an inert
:class:`Opaque` record (nothing is imported or called). :func:`plain` turns those records (Namespace, DictConfig)
back into plain dicts, enough to read the model settings.

Key renaming: CTC checkpoints go through fairseq2's ``convert_wav2vec2_asr_state_dict``. Pretraining
checkpoints use :func:`convert_fairseq1_ssl` below: fairseq2 0.8.1's ``convert_wav2vec2_state_dict`` recognizes
a fairseq1 file by a ``mask_emb.weight`` key, but fairseq1 saves the mask embedding as ``mask_emb`` (a bare
parameter), so it returns such files unconverted. :func:`fix_fairseq1_keys` handles weight norm saved as a
parametrization (``parametrizations.weight.original0/1``, fairseq after the move to
``torch.nn.utils.parametrizations``).
"""

from __future__ import annotations

import ast
import pickle
import re
import types
from pathlib import Path
from typing import Any

import torch
from torch._weights_only_unpickler import _get_allowed_globals

from seqwin.io.checkpoint_files import safe_load

_INERT_BUILTINS = {"set": set, "frozenset": frozenset, "object": object, "slice": slice, "complex": complex,
                   "bytearray": bytearray}


class Opaque:
    """Stand-in for a class the checkpoint names but we refuse to import: keeps constructor args and state.
    Class-level defaults: pickle's NEWOBJ creates instances without calling ``__init__``."""

    args: tuple = ()
    state: Any = None
    items: dict | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses pickle their items this way
        if self.items is None:
            self.items = {}
        self.items[key] = value

    def append(self, value: Any) -> None:  # list subclasses
        self[len(self.items or ())] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)


def _opaque_class(module: str, name: str) -> type:
    return type(name, (Opaque,), {"__module__": f"opaque:{module}"})


def _reconstructor(cls: type, base: type, state: Any) -> Any:  # copyreg._reconstructor, without calling base
    obj = cls() if isinstance(cls, type) and issubclass(cls, Opaque) else Opaque()
    if state is not None and isinstance(obj, Opaque):
        obj.args = (state,)
    return obj


class _SafeUnpickler(pickle.Unpickler):
    allowed = _get_allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in self.allowed:
            return self.allowed[qualified]
        if module == "builtins" and name in _INERT_BUILTINS:
            return _INERT_BUILTINS[name]
        if module == "copyreg" and name == "_reconstructor":
            return _reconstructor
        if module.startswith("torch") and ("Storage" in name or name.startswith("_rebuild")):
            # torch's own loader maps storage names itself; unknown rebuild helpers are refused.
            if "Storage" in name:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing torch helper {qualified}")
        return _opaque_class(module, name)


_SAFE_PICKLE = types.SimpleNamespace(Unpickler=_SafeUnpickler, load=pickle.load, __name__="seqwin_safe_pickle")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file without running code from it (see the module docstring)."""
    try:
        return safe_load(path)
    except pickle.UnpicklingError:
        pass  # holds config objects: retry with inert stand-ins below
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_SAFE_PICKLE)


def plain(obj: Any) -> Any:
    """Opaque records (Namespace, omegaconf nodes) -> dicts/values, recursively."""
    if isinstance(obj, Opaque):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = state[1]  # (dict_state, slot_state) from __reduce_ex__
        if isinstance(state, dict):
            if "_content" in state:  # omegaconf DictConfig / ListConfig
                return plain(state["_content"])
            if "_val" in state:  # omegaconf value node
                return plain(state["_val"])
            return {k: plain(v) for k, v in state.items()}
        if obj.items:
            return {k: plain(v) for k, v in obj.items.items()}
        if obj.args and isinstance(obj.args[0], dict):
            return plain(obj.args[0])
        return None
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def model_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model part of a fairseq1 training config (``cfg.model`` or ``args``), for ASR checkpoints merged
    with the wrapped SSL model's (``w2v_args``) so one dict answers every shape question."""
    cfg = plain(checkpoint.get("cfg"))
    model: dict[str, Any] = {}
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model = dict(cfg["model"])
    elif (args := plain(checkpoint.get("args"))) is not None and isinstance(args, dict):
        model = dict(args)
    inner = model.get("w2v_args")
    if isinstance(inner, dict):
        inner = inner.get("model", inner)
        model = {**inner, **{k: v for k, v in model.items() if k != "w2v_args"}}
    return model


def parse_conv_layers(text: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``, evaluated
    without ``eval``: only lists/tuples of integers, ``+`` and ``* int`` are accepted."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported conv_feature_layers expression: {text!r}")

    layers = value(ast.parse(text, mode="eval").body)
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride): {text!r}")
    return [tuple(int(x) for x in t) for t in layers]


_PARAMETRIZED = re.compile(r"^(.*)\.parametrizations\.weight\.original([01])$")


def fix_fairseq1_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Weight norm saved as a parametrization -> the ``weight_g``/``weight_v`` names fairseq2 uses."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        m = _PARAMETRIZED.match(key)
        if m:
            key = f"{m.group(1)}.weight_{'g' if m.group(2) == '0' else 'v'}"
        out[key] = value
    return out


# fairseq1 pretraining module names -> fairseq2's (fairseq2's own map plus the single position conv).
_SSL_KEY_MAP = {
    r"^encoder\.layers\.([0-9]+)\.self_attn\.out_proj\.": r"encoder.layers.\1.self_attn.output_proj.",
    r"^encoder\.layers\.([0-9]+)\.fc1\.": r"encoder.layers.\1.ffn.inner_proj.",
    r"^encoder\.layers\.([0-9]+)\.fc2\.": r"encoder.layers.\1.ffn.output_proj.",
    r"^encoder\.layers\.([0-9]+)\.final_layer_norm\.": r"encoder.layers.\1.ffn_layer_norm.",
    r"^encoder\.pos_conv\.0\.": r"encoder_frontend.pos_encoder.conv.",
    r"^feature_extractor\.conv_layers\.([0-9]+)\.0\.": r"encoder_frontend.feature_extractor.layers.\1.conv.",
    r"^feature_extractor\.conv_layers\.([0-9]+)\.2\.1\.": r"encoder_frontend.feature_extractor.layers.\1.layer_norm.",
    r"^feature_extractor\.conv_layers\.0\.2\.": r"encoder_frontend.feature_extractor.layers.0.group_norm.",
    r"^layer_norm\.": r"encoder_frontend.post_extract_layer_norm.",
    r"^post_extract_proj\.": r"encoder_frontend.model_dim_proj.",
    r"^mask_emb$": r"masker.temporal_mask_embed",
    r"^quantizer\.vars$": r"quantizer.entries",
    r"^quantizer\.weight_proj\.": r"quantizer.entry_proj.",
    r"^project_q\.": r"final_target_proj.",
}


def convert_fairseq1_ssl(state_dict: dict[str, Any], post_norm: bool) -> dict[str, Any]:
    """A fairseq1 wav2vec 2.0 pretraining state dict -> fairseq2 names (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in fix_fairseq1_keys(state_dict).items():
        if key == "encoder.layer_norm.weight" or key == "encoder.layer_norm.bias":
            # post-norm encoders normalize the encoder *input*: fairseq2 keeps that norm in the frontend
            out[key.replace("encoder.", "encoder_frontend.", 1) if post_norm else key] = value
            continue
        if key == "encoder.version" or key.startswith("target_glu."):
            continue
        for pattern, repl in _SSL_KEY_MAP.items():
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        out[key] = value
    out.setdefault("quantizer.num_updates", torch.zeros((), dtype=torch.int64))
    return out


def is_fairseq1(state_dict: dict[str, Any]) -> bool:
    return "mask_emb" in state_dict or "w2v_encoder.proj.weight" in state_dict
