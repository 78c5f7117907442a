"""``select_model``: the run keeps the best validation AUC among models of iHAS's footprint or less."""

from __future__ import annotations

import pytest

from ihas_lightning.pipeline.selection import select_model, selection_message


def entry(val_auc: float | None, footprint: int | None) -> dict:
    return {"val_auc": val_auc, "footprint_params": footprint, "test_auc": 0.5}


def test_ihas_is_kept_when_it_has_the_best_validation_auc() -> None:
    metrics = {"ihas": entry(0.75, 1000), "baseline_matched": entry(0.74, 1005), "baseline": entry(0.76, 2000)}
    selection = select_model(metrics)
    assert selection["kept"] == "ihas"
    assert [c["model"] for c in selection["compared"]] == ["ihas", "baseline_matched"]   # uniform-16 is larger
    assert selection_message(selection).startswith("kept: iHAS (validation AUC 0.7500")


def test_a_uniform_model_of_the_same_footprint_that_wins_on_validation_is_said_plainly() -> None:
    metrics = {"ihas": entry(0.75, 1000), "baseline_matched": entry(0.7501, 1009), "fieldwise": entry(0.70, 800)}
    selection = select_model(metrics)
    assert selection["kept"] == "baseline_matched"
    message = selection_message(selection)
    assert "uniform, same footprint beats iHAS (0.7500)" in message and "not retrain/ihas_model.pt" in message
    assert "which `ihas export` exports" in message


def test_contenders_above_the_footprint_or_without_validation_figures_are_left_out() -> None:
    metrics = {"ihas": entry(0.75, 1000), "baseline_matched": entry(0.80, 1011), "baseline_mde": entry(None, 900),
               "fieldwise": entry(0.75, 800)}
    selection = select_model(metrics)
    assert [c["model"] for c in selection["compared"]] == ["ihas", "fieldwise"]
    assert selection["kept"] == "ihas"                                          # a tie keeps iHAS


def test_a_run_without_validation_figures_is_an_error() -> None:
    with pytest.raises(ValueError, match="no model of the run has a validation AUC"):
        select_model({"ihas": entry(None, 1000)})
