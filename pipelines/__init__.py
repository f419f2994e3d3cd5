"""skelpgt.pipelines."""
