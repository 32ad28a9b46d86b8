"""Layer 7, the TDA methods (step 2): the method registry (`registry`), one module per method, the step-2 runner and
command line, and the shared maths (factored gradient features, Hessian-vector linear algebra)."""
