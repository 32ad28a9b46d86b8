"""Layer 5, artifacts and their contract (../shared/DESIGN.md): checkpoints, score files, and the manifests of steps
3 and 4. Each reader checks a file against what it is used for and names the command that remakes it."""
