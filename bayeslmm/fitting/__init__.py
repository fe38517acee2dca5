"""Stage 3a: point fits (REML/ML, MAP, GLMM Laplace/AGQ) and the inference on them."""
