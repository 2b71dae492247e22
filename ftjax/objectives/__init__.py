"""Loss terms: what the train step minimizes."""
