"""Shipped YAML configs (models, parallel layouts, runs, evaluation tasks), carried by the wheel as
`pangu_ms.ascend_configs` (see pyproject.toml) so the package can read the built-in tasks. No code."""
