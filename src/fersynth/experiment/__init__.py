"""The one-config study: config schema, cached stage runner, report, and the offline demo."""

from fersynth.experiment.config import ExperimentConfig, config_from_dict, load_config
from fersynth.experiment.runner import Runner, run_experiment

__all__ = ["ExperimentConfig", "Runner", "config_from_dict", "load_config", "run_experiment"]
