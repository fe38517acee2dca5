"""Stage 1-2: formula text -> parsed terms -> numeric design (and model files)."""
