"""Layer 9, `run_experiment.py`: the task graph over the step scripts, and the local, Ray and Slurm backends."""
