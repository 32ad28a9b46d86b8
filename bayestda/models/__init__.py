"""Layer 4, models: the model-family declaration and its registry (`families`), the functional view every method
is built from (`func`), and the package's own families, one module each (`cnn`, `logreg`, `vit`), which register
themselves."""
