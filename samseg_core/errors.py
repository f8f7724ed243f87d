"""The errors a stage raises before it writes anything: each names the parameter at fault and the remedy."""

from __future__ import annotations


class StageParameterError(ValueError):
    """A stage parameter is invalid; ``param`` names it and the message says what to do instead.

    Raised before anything is written, so the dataset is unchanged.
    """

    def __init__(self, param: str, problem: str, remedy: str = "") -> None:
        self.param = param
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{param}: {problem}" + (f". {remedy}" if remedy else ""))

    def __reduce__(self):  # picklable across worker processes despite the extra arguments
        return type(self), (self.param, self.problem, self.remedy)


class FieldExistsError(StageParameterError):
    """A stage would replace values, files, runs or tags it did not create, without ``overwrite=True``."""


class EmptyViewError(StageParameterError):
    """The collection given to a stage holds no samples."""
