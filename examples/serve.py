"""Serve a model written by ``ihas export``, with neither ihas_lightning nor deepctr-torch installed.

Needs only the standard library, numpy and torch (a TorchScript ``.pt``) or onnxruntime (an ``.onnx``)::

    ihas export --run runs/demo --format onnx            # runs/demo/export/ihas.onnx + ihas.encoders.json
    python examples/serve.py runs/demo/export/ihas.onnx --csv rows.csv
    python examples/serve.py runs/demo/export/ihas.pt --json rows.json --out predictions.txt

Rows come as a CSV with a header (the training data's columns; the label column and any other extra
column are ignored) or as a JSON object of columns (``{"C1": ["a", "b"], "I1": [3.0, null], "genres":
["Comedy|Drama", ["Action"]]}``). Encoding follows the training encoders exactly: an empty or missing
category is the missing id, an unseen one the OOV id; a missing dense value becomes 0 after
standardization; multi-valued cells are split on their separator and cut to their maximum length.
Prints one click probability per row.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

SERVING_FORMAT = "ihas-serving/1"


class Vocabulary:
    """One field's category -> id map: known tokens, or the integer ids ``0..range_size-1``."""

    def __init__(self, spec: dict, ids: dict) -> None:
        self.missing, self.oov, first = ids["missing"], ids["oov"], ids["first_known"]
        self.range_size = spec.get("range_size")
        tokens = spec.get("tokens")
        self.lookup = {token: first + i for i, token in enumerate(tokens)} if tokens is not None else None
        self.first = first

    def id(self, token: str) -> int:
        if token == "":
            return self.missing
        if self.lookup is not None:
            return self.lookup.get(token, self.oov)
        if token.isdigit() and int(token) < self.range_size:
            return int(token) + self.first
        return self.oov


def load_spec(path: str | Path) -> dict:
    spec = json.loads(Path(path).read_text())
    if spec.get("format") != SERVING_FORMAT:
        raise ValueError(f"'{path}' is not an ihas encoders file (format {spec.get('format')!r})")
    return spec


def _text(value: object) -> str:
    """A cell as category text: None/NaN -> "" (missing), 7.0 -> "7"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        return float(value) if value.strip() else math.nan
    return float(value)


def _tokens(value: object, separator: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value if v is not None]
    text = _text(value)
    return [token for token in text.split(separator) if token] if text else []


def encode(spec: dict, columns: dict[str, list]) -> dict[str, np.ndarray]:
    """Raw columns -> the model's inputs ``sparse`` (N, F) int64, ``dense`` (N, F) float32, ``multi`` (N, L)."""
    names = [f["name"] for f in (*spec["sparse"], *spec["dense"], *spec["multivalued"])]
    missing = [name for name in names if name not in columns]
    if missing:
        raise ValueError(f"the rows have no columns {missing}; the model needs {names}")
    rows = len(columns[names[0]])
    sparse = np.zeros((rows, len(spec["sparse"])), dtype=np.int64)
    for j, field in enumerate(spec["sparse"]):
        vocabulary = Vocabulary(field, spec["ids"])
        sparse[:, j] = [vocabulary.id(_text(v)) for v in columns[field["name"]]]
    dense = np.zeros((rows, len(spec["dense"])), dtype=np.float32)
    if spec["dense"]:
        raw = np.stack([np.array([_number(v) for v in columns[f["name"]]], dtype=np.float64)
                        for f in spec["dense"]], axis=1)                                       # (N, F), NaN missing
        log = np.array([f["log1p"] for f in spec["dense"]])
        raw = np.where(log, np.log1p(np.maximum(raw, 0.0)), raw)
        mean = np.array([f["mean"] for f in spec["dense"]], dtype=np.float64)
        std = np.array([f["std"] for f in spec["dense"]], dtype=np.float64)
        dense = np.nan_to_num((raw - mean) / std, nan=0.0).astype(np.float32)
    blocks = []
    for field in spec["multivalued"]:
        vocabulary = Vocabulary(field, spec["ids"])
        block = np.zeros((rows, field["max_len"]), dtype=np.int64)                              # 0 = padding
        for i, value in enumerate(columns[field["name"]]):
            ids = [vocabulary.id(t) for t in _tokens(value, field["separator"])[:field["max_len"]]]
            block[i, :len(ids)] = [vocabulary.oov if x == vocabulary.missing else x for x in ids]
        blocks.append(block)
    multi = np.concatenate(blocks, axis=1) if blocks else np.zeros((rows, 0), dtype=np.int64)
    return {"sparse": sparse, "dense": dense, "multi": multi}


def read_csv(path: str | Path) -> dict[str, list[str]]:
    """A CSV with a header as columns of text (blank lines skipped)."""
    with open(path, newline="", encoding="utf-8") as file:
        rows = [row for row in csv.reader(file, strict=True) if row]
    if not rows:
        raise ValueError(f"'{path}' is empty")
    header = [name.strip() for name in rows[0]]
    return {name: [row[j] for row in rows[1:]] for j, name in enumerate(header)}


def predict(model_path: str | Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Probabilities (N,) from the exported model: onnxruntime for ``.onnx``, TorchScript otherwise."""
    if str(model_path).endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}          # an input the graph never reads is dropped
        return session.run(None, {k: v for k, v in inputs.items() if k in wanted})[0]
    import torch

    model = torch.jit.load(str(model_path), map_location="cpu")
    with torch.no_grad():
        return model(*(torch.from_numpy(inputs[k]) for k in ("sparse", "dense", "multi"))).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the exported model (.pt TorchScript or .onnx)")
    parser.add_argument("--encoders", help="its encoders JSON (default: MODEL's stem + .encoders.json)")
    rows = parser.add_mutually_exclusive_group(required=True)
    rows.add_argument("--csv", help="rows as a CSV file with a header")
    rows.add_argument("--json", help="rows as a JSON object of columns")
    parser.add_argument("--out", help="write the probabilities here instead of printing them")
    args = parser.parse_args(argv)
    model = Path(args.model)
    spec = load_spec(args.encoders or model.with_name(f"{model.stem}.encoders.json"))
    columns = read_csv(args.csv) if args.csv else json.loads(Path(args.json).read_text())
    probabilities = predict(model, encode(spec, columns))
    text = "".join(f"{p:.9g}\n" for p in probabilities.tolist())
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
