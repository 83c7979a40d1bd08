"""Observability: Prometheus metrics (metrics.py), the worker's hooks into them and into alerting
(worker_hooks.py), the supervisor's metrics endpoint (exporter.py) and Slack delivery (slack.py).
"""
