"""The errors of ``edgehema train``: one line each, all problems of the data listed together."""

from __future__ import annotations

from edgehema.exceptions import EdgehemaError


class TrainingError(EdgehemaError):
    """Training cannot start or go on as asked (bad data, a wrong --init bundle, no GPU)."""


class TrainingDataProblems(TrainingError):
    """Everything wrong with the data and the reference, found before anything is trained."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the training data; nothing was trained: "
                         + "; ".join(self.problems))
