"""skelpgt.fitting."""
