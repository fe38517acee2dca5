"""Stage 4: one result type per back end, with the same verbs."""
