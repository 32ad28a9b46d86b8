"""Layer 8, analysis: steps 3–7 (statistics, correlations, distributional TDA, LDS, mislabel detection), their
figures and the report."""
