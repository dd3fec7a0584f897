"""Optuna search over config keys, where each trial is a whole lottery run. The only package that imports
optuna (engine.py). space.py parses and checks search spaces; objective.py scores a trial from its rows;
request.py says what a search is asked to do and how a trial runs; storage.py holds the database URL
helpers and the search's parent MLflow run.

May import lottery.config, lottery.workflows, lottery.run and lottery.tracking; never the CLI.
"""
