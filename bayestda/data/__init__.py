"""Layer 1, data: tasks (the declaration and its registry), dataset readers, subset index files and the tensors every
step trains and scores on, label noise, and the flags that name them."""

from .subsets import Subset, load_split, load_subset, read_indices
from .tasks import Task, get_task, register, task_argv, task_name

__all__ = ["Subset", "Task", "get_task", "load_split", "load_subset", "read_indices", "register", "task_argv",
           "task_name"]  # fmt: skip
