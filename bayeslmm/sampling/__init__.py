"""Stage 3b: posteriors (the PyMC full model, the collapsed and partially collapsed samplers)."""
