"""Tracking: the interface (base.py) and the no-op tracker, the MLflow client (client.py) that forwards to a
helper process (server.py, the only module that imports mlflow), what both share (protocol.py), and
`lottery sync` (sync.py), which mirrors a run directory into MLflow.

The run directory is the record; MLflow mirrors it. May import lottery.config, lottery.run.files/locks/layout;
server.py never imports torch. Nothing here imports a workflow.
"""
