"""Which model a run ships: the best validation AUC among the models of iHAS's footprint or less.

A search-based model is worth shipping only if it beats what a user gets without the search at the same size.
``ihas run`` therefore compares, on validation data only, iHAS with the models it trained at the same or a
smaller footprint (tables + router): the field-wise model (one group), the uniform model matched to iHAS's
footprint and the frequency-based mixed dimensions, when the run trained them. The test split plays no part.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CONTENDERS", "select_model", "selection_message"]

CONTENDERS = {"ihas": "iHAS", "fieldwise": "field-wise (one group)", "baseline_matched": "uniform, same footprint",
              "baseline_mde": "mixed dims by frequency, same footprint"}
"""The models a run may ship, by their key in ``DIR/metrics.json``, with the names its summary prints."""

FOOTPRINT_SLACK = 0.01
"""A contender may exceed iHAS's footprint by this share (the matched uniform model is fitted within 1%)."""


def select_model(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{"compared": [...], "kept": key}``: the contender with the highest validation AUC.

    Contenders are the :data:`CONTENDERS` present in ``metrics`` with a validation AUC and a footprint at most
    iHAS's (plus :data:`FOOTPRINT_SLACK`); ties keep iHAS, then the smaller footprint.
    """
    limit = (metrics["ihas"].get("footprint_params") or 0) * (1 + FOOTPRINT_SLACK)
    compared = []
    for key in CONTENDERS:
        entry = metrics.get(key)
        if not entry or entry.get("val_auc") is None:
            continue
        footprint = entry.get("footprint_params")
        if key != "ihas" and (footprint is None or footprint > limit):
            continue
        compared.append({"model": key, "val_auc": float(entry["val_auc"]), "footprint_params": footprint})
    if not compared:
        raise ValueError("no model of the run has a validation AUC to select by")
    kept = max(compared, key=lambda c: (c["val_auc"], c["model"] == "ihas", -(c["footprint_params"] or 0)))
    return {"compared": compared, "kept": kept["model"]}


def selection_message(selection: dict[str, Any]) -> str:
    """One plain sentence: what was kept, against what, by how much on validation."""
    scores = {c["model"]: c["val_auc"] for c in selection["compared"]}
    kept = selection["kept"]
    others = ", ".join(f"{CONTENDERS[m]} {v:.4f}" for m, v in scores.items() if m != kept) or "nothing else"
    line = f"kept: {CONTENDERS[kept]} (validation AUC {scores[kept]:.4f}; compared with {others})"
    if kept != "ihas":
        line += (f". On validation, {CONTENDERS[kept]} beats iHAS ({scores['ihas']:.4f}) at the same or a smaller "
                 f"footprint: ship that model (the run's {kept}/ folder, which `ihas export` exports), not "
                 "retrain/ihas_model.pt")
    return line
