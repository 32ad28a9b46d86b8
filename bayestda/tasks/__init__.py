"""Layer 2, the package's own tasks (`mnist3`, `cifar10`), one module each; every module here is registered on first use
(`data.tasks`)."""
