"""Studies: the bundled simple experiments, each a config + run + report."""
