"""Layer 3, training, model-agnostic: the recipe (`recipe`), the loss (`losses`), the one training loop (`loop`),
stacks of models trained as one (`stacking`) and how a seed becomes a posterior sample (`posterior`)."""
