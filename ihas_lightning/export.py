"""Export a trained model for serving without this package or DeepCTR-Torch: TorchScript (torch alone) or ONNX
(onnxruntime alone), plus the encoders as plain JSON.

The exported model is :class:`ServingModel`: plain tensors in, click probabilities out::

    sparse (B, F_sparse) int64   ids of the single-valued fields, schema order (0 missing, 1 OOV, 2.. known)
    dense  (B, F_dense)  float32 standardized dense fields (missing -> 0)
    multi  (B, sum max_len) int64  padded ids of the multi-valued fields, one block per field (0 = padding)
    ->     (B,) float32 probabilities

Routing stays inside the graph and a batch may mix groups. A RetrainModule is exported in its compact form
(:class:`~ihas_lightning.compact.CompactGroups`): the router picks a group per row, and each group's rows
(``nonzero``, ``index_select``) run through that group's own layers at its own widths and are scattered back
in batch order; with ``group_dense`` each group's layers are its own copies. A backbone without a compact
form (or ``compact=False``) exports the zero-padded model: each row's embeddings masked to its group's
dimensions (``group_masks[groups]``) and the backbone at the full width; with per-group dense layers every
group's layers then run on the whole batch and each row keeps its own group's logit (``gather``). The batch
axis is dynamic; the other axes are fixed by the schema.

The encoders JSON (:func:`serving_spec`, format :data:`SERVING_FORMAT`) holds data only: field order,
vocabularies (or the range of integer ids), the missing/OOV ids, dense log transforms and standardization,
multi-valued separators and lengths. ``examples/serve.py`` encodes raw rows with it exactly as
:meth:`FeatureEncoder.transform` does.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .compact import compact_or_none
from .data.encoders import MISSING_ID, OOV_ID, FeatureEncoder
from .model import IHASModel
from .modules.backbone_module import BackboneModule
from .modules.base import CTRModule, eval_mode
from .modules.retrain_module import RetrainModule
from .safe_load import load_torch_file

__all__ = ["EXPORT_FORMATS", "EXPORTABLE_MODELS", "SERVING_FORMAT", "ExportedFiles", "ServingModel",
           "encoders_path", "export_model", "export_run", "load_run_model", "resolve_run_model", "serving_spec"]

EXPORT_FORMATS = ("torchscript", "onnx")
"""``torchscript``: ``torch.jit.load`` runs it; ``onnx``: onnxruntime runs it (opset 17)."""

EXPORTABLE_MODELS = {"ihas": "retrain/ihas_model.pt", "fieldwise": "fieldwise/ihas_model.pt",
                     "baseline": "baseline/checkpoints/best.ckpt",
                     "baseline_matched": "baseline_matched/checkpoints/best.ckpt",
                     "baseline_mde": "baseline_mde/alpha_<kept_alpha>/checkpoints/best.ckpt"}
"""The models of a run folder ``export_run`` exports, and the file each is read from; ``"kept"`` names the one the
run kept on validation (``DIR/metrics.json``'s ``selection``: iHAS or a model of its footprint or less)."""

SERVING_FORMAT = "ihas-serving/1"
INPUT_NAMES = ("sparse", "dense", "multi")
ONNX_OPSET = 17
_SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}


class ServingModel(nn.Module):
    """``(sparse, dense, multi)`` tensors -> ``(B,)`` probabilities of a trained :class:`RetrainModule` or
    :class:`BackboneModule` (evaluation mode; see the module docstring for the layout).

    ``compact`` (default) serves a RetrainModule's groups at their own widths where the backbone allows
    (a warning says when it does not); False serves the zero-padded module."""

    def __init__(self, module: CTRModule, compact: bool = True) -> None:
        super().__init__()
        if not isinstance(module, (RetrainModule, BackboneModule)):
            raise ValueError(f"can export a RetrainModule or a BackboneModule, got {type(module).__name__}")
        if isinstance(module, RetrainModule) and module.hparams.groups_from != "router":
            raise ValueError("a RetrainModule with groups_from='batch' has no router to serve with; export one "
                             "that routes (groups_from='router')")
        # What the forward reads, registered here so the trace keeps them as parameters and buffers (and only
        # them: the compact form's file holds no full-width dense layers). The LightningModule itself stays
        # unregistered: the tracer probes every submodule's attributes, and its properties (trainer, a linear
        # router's centroids) raise when probed.
        self.compact = compact_or_none(module) if compact and isinstance(module, RetrainModule) else None
        if self.compact is None:
            self.backbone = module.backbone
        if self.compact is None and isinstance(module, RetrainModule):
            self.router = module.router
            self.group_params = module.group_params
            self.register_buffer("group_masks", module.group_masks)
        object.__setattr__(self, "_module", module.eval())

    def forward(self, sparse: Tensor, dense: Tensor, multi: Tensor) -> Tensor:
        batch = {"sparse": sparse, "dense": dense, "multi": multi}
        module = self._module
        if self.compact is not None:
            return torch.sigmoid(self.compact(batch))
        if isinstance(module, RetrainModule) and module.group_params is not None:
            return torch.sigmoid(_group_dense_logits(module, batch))
        return torch.sigmoid(module(batch))


def _group_dense_logits(module: RetrainModule, batch: dict[str, Tensor]) -> Tensor:
    """Every group's dense copies over the whole batch, each row's own group's logit kept: (B,)."""
    backbone = module.backbone
    groups = module.route(backbone.field_embeddings(batch))                                     # (B,)
    module._fixed_groups = groups                 # every row masked to its own group in every pass
    logits = []
    try:
        for group in range(module.num_groups):
            with _substituted(backbone, module.group_params.overrides(group)):
                logits.append(backbone(batch))                                                  # (B,)
    finally:
        module._fixed_groups = None
    return torch.stack(logits, dim=1).gather(1, groups.unsqueeze(1)).squeeze(1)                # (B,)


@contextmanager
def _substituted(root: nn.Module, tensors: dict[str, Tensor]) -> Iterator[None]:
    """``root``'s parameters and buffers named in ``tensors`` replaced by those tensors for the block: what
    ``functional_call`` does, which refuses to run while tracing."""
    saved = []
    for name, tensor in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = root.get_submodule(owner_name)
        slots = owner._parameters if leaf in owner._parameters else owner._buffers
        saved.append((slots, leaf, slots[leaf]))
        slots[leaf] = tensor
    try:
        yield
    finally:
        for slots, leaf, original in reversed(saved):
            slots[leaf] = original


def serving_spec(encoder: FeatureEncoder) -> dict:
    """The encoders as plain JSON data: everything ``examples/serve.py`` needs to encode raw rows."""
    if not encoder.fitted:
        raise ValueError("the encoder is not fitted: there is nothing to export")
    schema = encoder.schema
    vocabularies = {name: encoder.vocabularies[name].to_dict() for name in schema.embedded_fields}
    return {
        "format": SERVING_FORMAT,
        "label": schema.label,
        "ids": {"missing": MISSING_ID, "oov": OOV_ID, "first_known": OOV_ID + 1},   # the encoders' layout
        "sparse": [{"name": name, **vocabularies[name]} for name in schema.sparse],
        "dense": [{"name": name, "log1p": name in schema.log_dense, "mean": float(mean), "std": float(std)}
                  for name, mean, std in zip(schema.dense, encoder.dense_mean, encoder.dense_std)],
        "multivalued": [{"name": m.name, "separator": m.separator, "max_len": m.max_len, **vocabularies[m.name]}
                        for m in schema.multivalued],
        "inputs": {"sparse": [len(schema.sparse)], "dense": [len(schema.dense)],
                   "multi": [sum(m.max_len for m in schema.multivalued)]},
        "output": "probability",
    }


@dataclass(frozen=True)
class ExportedFiles:
    """What :func:`export_model` wrote: the model file and the encoders JSON next to it."""

    model: Path
    encoders: Path


def encoders_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.encoders.json`` (the encoders' file beside the model's)."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.encoders.json")


def export_model(model: IHASModel | CTRModule, out: str | Path, format: str = "torchscript",
                 encoder: FeatureEncoder | None = None, compact: bool = True) -> ExportedFiles:
    """Write ``model`` (an :class:`IHASModel`, a :class:`RetrainModule` or a :class:`BackboneModule`) to
    ``out`` as ``format`` (one of :data:`EXPORT_FORMATS`) and its encoders to ``out``'s ``.encoders.json``.

    ``encoder`` defaults to the model's own (an IHASModel's, or a module's loaded from its checkpoint).
    ``compact`` (default): a routed model's groups compute at their own widths (see :class:`ServingModel`).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    module = model.module if isinstance(model, IHASModel) else model
    encoder = encoder or model.encoder
    if encoder is None:
        raise ValueError("the model has no encoders; pass encoder= (the FeatureEncoder it was trained with)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = _example_inputs(encoder)
    # the module's own modes come back afterwards (ServingModel puts it in eval mode, so they are taken before)
    with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        serving = ServingModel(module, compact=compact)
        # The backbone's input checks (finite dense values, ids within the tables) branch on values; the
        # encoder guarantees them, so the traced graph keeps the valid path only.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if format == "torchscript":
            torch.jit.save(torch.jit.trace(serving, example, check_trace=False), str(out))
        else:
            _export_onnx(serving, example, out)
    encoders = encoders_path(out)             # the same for either format: serve.py goes by the model's suffix
    encoders.write_text(json.dumps(serving_spec(encoder)))
    return ExportedFiles(out, encoders)


def _export_onnx(serving: ServingModel, example: tuple[Tensor, ...], out: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'ihas-lightning[export]'") from None
    torch.onnx.export(serving, example, str(out), dynamo=False, opset_version=ONNX_OPSET,
                      input_names=list(INPUT_NAMES), output_names=["probability"],
                      dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, "probability")})


def _example_inputs(encoder: FeatureEncoder) -> tuple[Tensor, Tensor, Tensor]:
    """Tracing inputs: 3 rows of missing values (valid ids; 3 so no axis of size 1 is specialized)."""
    schema = encoder.schema
    rows = 3
    return (torch.zeros(rows, len(schema.sparse), dtype=torch.long),
            torch.zeros(rows, len(schema.dense), dtype=torch.float32),
            torch.zeros(rows, sum(m.max_len for m in schema.multivalued), dtype=torch.long))


def resolve_run_model(run: str | Path, model: str = "kept") -> str:
    """``model`` itself, or for ``"kept"`` the model the run kept on validation (``"ihas"`` for a run from before
    the selection); a ValueError for an unknown name or a folder that is not a finished run."""
    if model != "kept" and model not in EXPORTABLE_MODELS:
        raise ValueError(f"unknown model {model!r}; choose kept or one of {', '.join(EXPORTABLE_MODELS)}")
    root = Path(run)
    if not (root / "run.json").is_file():
        raise ValueError(f"'{root}' is not a run folder (no run.json); give the --out folder of an 'ihas run'")
    if model != "kept":
        return model
    metrics = root / "metrics.json"
    if not metrics.is_file():
        raise ValueError(f"run '{root}' has not finished ('{metrics}' is missing), so it has kept no model yet")
    kept = json.loads(metrics.read_text()).get("selection", {}).get("kept", "ihas")
    if kept not in EXPORTABLE_MODELS:
        raise ValueError(f"run '{root}' kept {kept!r}, which is not one of {', '.join(EXPORTABLE_MODELS)}")
    return kept


def load_run_model(run: str | Path, model: str = "kept") -> tuple[CTRModule, FeatureEncoder]:
    """The trained module ``model`` (``"kept"``, the run's choice on validation, or a key of
    :data:`EXPORTABLE_MODELS`) of the run folder ``run``, with the run's encoders; a ValueError says what is
    missing."""
    model = resolve_run_model(run, model)
    root = Path(run)
    path = _model_path(root, model)
    if not path.is_file():
        raise ValueError(f"run '{root}' has no {model} model ('{path}' is missing): finish the run first, or "
                         "train it (ihas run trains fieldwise unless --no-fieldwise, baseline_mde with --mde-baseline)")
    if path.name == "ihas_model.pt":
        loaded = IHASModel.load(path)
        if loaded.encoder is None:
            raise ValueError(f"'{path}' was saved without encoders; export it with export_model(encoder=...)")
        return loaded.module, loaded.encoder
    checkpoint = load_torch_file(path, f"the {model} checkpoint")
    if not isinstance(checkpoint, dict) or "ihas_encoder" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"'{path}' is not a BackboneModule checkpoint with encoders")
    module = BackboneModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module, FeatureEncoder.from_dict(checkpoint["ihas_encoder"])


def _model_path(root: Path, model: str) -> Path:
    """Where ``model``'s file is; the mixed-dimension baseline's is the one of its validation-chosen alpha, in the
    folder that alpha's widths were trained in (alphas that give the same widths share one)."""
    if model != "baseline_mde":
        return root / EXPORTABLE_MODELS[model]
    metrics = root / "baseline_mde" / "metrics.json"
    if not metrics.is_file():
        return root / EXPORTABLE_MODELS[model]
    summary = json.loads(metrics.read_text())
    kept = [c for c in summary.get("candidates", []) if c.get("alpha") == summary.get("kept_alpha")]
    if not kept or "trained_in" not in kept[0]:
        raise ValueError(f"'{metrics}' names no folder for its kept alpha {summary.get('kept_alpha')!r}")
    return root / kept[0]["trained_in"] / "checkpoints" / "best.ckpt"


def export_run(run: str | Path, format: str = "torchscript", out: str | Path | None = None,
               model: str = "kept") -> ExportedFiles:
    """Export the run's ``model`` (default: the one it kept on validation, see :func:`resolve_run_model`) to
    ``out`` (default ``RUN/export/<model>.pt`` or ``.onnx``, the model's own name)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    model = resolve_run_model(run, model)
    module, encoder = load_run_model(run, model)
    target = Path(out) if out is not None else Path(run) / "export" / f"{model}{_SUFFIXES[format]}"
    return export_model(module, target, format, encoder)
