"""Training: the run config's schema, the train state and its one jitted step, the loop."""
