"""Stage 5: summaries, checks, plots and the HTML report; they read results only."""
