"""Layer 6, a seed's training run: making it (step 1, `ensemble`), reading its posterior samples (`samples`),
replaying it (`replay`), and retraining it with one change (`retrains`: LOO's engine; `subset_retrains`: step 2b)."""
