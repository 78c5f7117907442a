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
    sub.add_argument("--model", default="ihas",
                     help=f"which of the run's models: {', '.join(EXPORTABLE_MODELS)} (default ihas)")
    sub.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> ExportedFiles:
    from ..export import export_run

    files = export_run(args.run, args.format, args.out, args.model)
    print(f"model: {files.model}\nencoders: {files.encoders}\n"
          f"serve: python examples/serve.py {files.model} --csv ROWS.csv")
    return files
