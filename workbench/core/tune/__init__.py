"""Tune: search the optimization registry for the best recipe within an accuracy budget. Torch-free at import.

``Tuner(config, emit).run()`` builds a search space from the registry, runs trials one by one in a tune-worker job
process, streams events and returns the tune report. docs/tune.md describes the design; the modules:
``budget`` (durations, accuracy budget, objectives, gain, frontier), ``space`` (candidates), ``trials`` (the trial
cache), ``events``, ``decide`` (per-trial decisions), ``orchestrator`` (``TuneConfig``, ``Tuner``), ``form`` (front
ends' values → ``TuneConfig``) and ``worker`` (the job side; imported by the job process only, not here).
"""

from workbench.core.tune.budget import (ACCURACY_PARAM, METRIC_ALIASES, OBJECTIVES, TASK_METRICS, ZERO_BASELINE,
                                        AccuracyBudget, Limit, check_accuracy, choose, dotted, gain, gain_threshold,
                                        memory_metric, objective_info, param_name, pareto_frontier,
                                        parse_accuracy_budget, parse_duration)
from workbench.core.tune.events import EVENT_TYPES, Emit, jsonable
from workbench.core.tune.form import parse_field, parse_opts, tune_config
from workbench.core.tune.orchestrator import SCHEMA, STATUSES, TuneConfig, Tuner
from workbench.core.tune.space import PHASES, Candidate, Space, build_space, canon
from workbench.core.tune.trials import (TRIAL_SCHEMA, baseline_key, cache_load, cache_save, context_key_parts,
                                        trial_key, trials_dir)

__all__ = [
    "ACCURACY_PARAM", "EVENT_TYPES", "METRIC_ALIASES", "OBJECTIVES", "PHASES", "SCHEMA", "STATUSES", "TASK_METRICS",
    "TRIAL_SCHEMA", "ZERO_BASELINE", "AccuracyBudget", "Candidate", "Emit", "Limit", "Space", "TuneConfig", "Tuner",
    "baseline_key", "build_space", "cache_load", "cache_save", "canon", "check_accuracy", "choose",
    "context_key_parts", "dotted", "gain", "gain_threshold", "jsonable", "memory_metric", "objective_info",
    "param_name", "pareto_frontier", "parse_accuracy_budget", "parse_duration", "parse_field", "parse_opts",
    "trial_key", "trials_dir", "tune_config",
]
