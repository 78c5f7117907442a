"""``ihas export``: a run's model as TorchScript or ONNX, plus its encoders as JSON, for serving without
ihas_lightning or deepctr-torch (``examples/serve.py`` shows how)."""

from __future__ import annotations

import argparse

from ..export import EXPORT_FORMATS, EXPORTABLE_MODELS, ExportedFiles

__all__ = ["register", "run_export"]


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser("export", help="write a run's model as TorchScript or ONNX with its encoders as JSON",
                                description=__doc__)
    sub.add_argument("--run", required=True, help="run directory made by `ihas run`")
    # Checked by the library, not by argparse choices: a bad value is then one line, like every other error.
    sub.add_argument("--format", required=True, help=f"one of {', '.join(EXPORT_FORMATS)}")
    sub.add_argument("--out", default=None,
                     help="model file (default DIR/export/MODEL.pt or .onnx); the encoders go beside it as "
                          "<stem>.encoders.json")
    sub.add_argument("--model", default="kept",
                     help=f"which of the run's models: kept (default: the one the run kept on validation, as its "
                          f"summary said) or one of {', '.join(EXPORTABLE_MODELS)}")
    sub.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> ExportedFiles:
    from ..export import export_run, resolve_run_model

    model = resolve_run_model(args.run, args.model)
    files = export_run(args.run, args.format, args.out, model)
    which = f"{model} (the model the run kept on validation)" if args.model == "kept" else model
    print(f"exported: {which}\nmodel: {files.model}\nencoders: {files.encoders}\n"
          f"serve: python examples/serve.py {files.model} --csv ROWS.csv")
    return files
