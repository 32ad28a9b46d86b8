"""Run whole experiments: the task graph over the step scripts, and the local, Ray and Slurm backends."""
