"""skelpgt.pipelines."""

import os

# Offline runs must not try to send telemetry: Prefect logs an ERROR line when it cannot
# (ecosystem-notes.md). Set before any Prefect setting is read; an explicit value wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
