"""Layer 0, core utilities that know nothing of tasks, models or methods: errors, atomic writes, typed options,
command-line parsing and suggested commands, the registries and plug-ins, artifact paths, random streams, memory
settings and the process lifeline."""

__version__ = "0.1.0"
