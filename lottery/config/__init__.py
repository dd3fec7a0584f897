"""The config: the schema (schema.py), YAML files and dotted overrides (loading.py), and its rules (validation.py).

Lowest layer of the package: it imports only lottery.errors and lottery.steps, never a registry, so any
module may import it. Names of models, datasets and pruning methods are checked where the registries live
(lottery.workflows.preflight).
"""
from lottery.config.loading import (COMMAND_LINE, experiment_path, from_dict, from_yaml, known_experiments, load_config,
                                    parse_override, replace, set_dotted, to_yaml)
from lottery.config.tree import config_hash, flatten, source_of, to_dict
from lottery.config.schema import (REQUIRED, BaselineConfig, Config, DataConfig, ModelConfig, PruneConfig, RunConfig,
                                   SearchConfig, TicketConfig, TrackConfig, TrainConfig)
from lottery.config.validation import validate
from lottery.errors import ConfigError

__all__ = [
    "COMMAND_LINE", "REQUIRED", "BaselineConfig", "Config", "ConfigError", "DataConfig", "ModelConfig", "PruneConfig",
    "RunConfig", "SearchConfig", "TicketConfig", "TrackConfig", "TrainConfig", "config_hash", "experiment_path",
    "flatten", "from_dict", "from_yaml", "known_experiments", "load_config", "parse_override", "replace", "set_dotted",
    "source_of", "to_dict", "to_yaml", "validate",
]
