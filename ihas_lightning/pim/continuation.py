"""Continuing a PIM study: only with the settings its trials were scored with.

A study on a storage is continued by every run that names it (``load_if_exists``). Trials of another search space
(``--mode``, the cost vocabulary) or another scoring (fine-tune, refit, ``--max-auc-drop``) would sit on one Pareto
front with values that do not compare, and their parameters would not even rebuild in the other space.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import optuna

from ..json_files import record_differences

if TYPE_CHECKING:
    from .study import PIMObjective

__all__ = ["check_continuation", "scoring_record"]


def scoring_record(objective: PIMObjective) -> dict[str, Any]:
    """What a trial's values depend on besides its parameters: the search space (mode, choices, the vocabulary the
    cost is taken at) and how the accuracy is scored and constrained."""
    record = {"search_space": objective.space.to_dict(), "max_auc_drop": objective.max_auc_drop,
              "finetune_steps": objective.finetune_steps, "finetune_lr": objective.finetune_lr,
              "refit_sweeps": objective.refit_sweeps, "refit_prior": objective.refit_prior,
              "refit_rows": objective.refit_rows}
    return json.loads(json.dumps(record))                                   # as the storage gives it back


def check_continuation(study: optuna.Study, objective: PIMObjective) -> None:
    """Record :func:`scoring_record` in the study, or refuse (ValueError naming what differs) when its trials were
    scored otherwise. A study from before the record is checked on its search space alone."""
    record = scoring_record(objective)
    saved = study.user_attrs.get("scoring")
    if saved is None and "search_space" in study.user_attrs and study.get_trials(deepcopy=False):
        saved = {"search_space": study.user_attrs["search_space"]}
    differences = record_differences(saved, record) if saved is not None else []
    if differences:
        raise ValueError(f"study {study.study_name!r} was run with other settings ({'; '.join(differences)}): its "
                         "trials would not compare with these. Continue it with the settings it was run with, or "
                         "start another study (--study-name NAME, or another --storage)")
    study.set_user_attr("scoring", record)
    study.set_user_attr("search_space", record["search_space"])
