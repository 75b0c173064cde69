"""What every service shows its operators: logs (`logs`), readiness (`readiness`), shared metrics
(`metrics`) and the small HTTP server for `/healthz`, `/readyz` and `/metrics` (`server`).

One implementation for the bridge and both flows (the gateway serves the same endpoints on its own
port, from the same readiness rules). Names, ports and alert rules: docs/monitoring.md.
"""
