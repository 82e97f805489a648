"""The fixed protocol, its metrics, the per-request-class measures, the reports and the gate."""
