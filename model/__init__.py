"""skelpgt.model."""
