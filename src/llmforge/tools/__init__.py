"""Using a run: generation, the data report, plots, checkpoint comparison, show-example."""
