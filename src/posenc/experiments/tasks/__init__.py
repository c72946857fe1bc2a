"""``posenc tasks``: length generalization on synthetic tasks with exact answers (passkey, copy, assoc).

>>> from posenc.experiments.tasks import TasksConfig, run_tasks
>>> results = run_tasks(TasksConfig.quick(), encodings=["rope", "none"], out="runs/tasks-quick")  # doctest: +SKIP
"""

from .experiment import run_tasks
from .generators import TASKS, Task, available_tasks, get_task
from .run import TasksConfig, accuracy, answer_loss, answers_correct

__all__ = [
    "TASKS",
    "Task",
    "TasksConfig",
    "accuracy",
    "answer_loss",
    "answers_correct",
    "available_tasks",
    "get_task",
    "run_tasks",
]
