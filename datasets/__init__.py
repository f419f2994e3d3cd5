"""skelpgt.datasets."""
