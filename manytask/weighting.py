"""Loss-weight schedules: how much a main and an auxiliary objective count at training epoch t.

From Belharbi, Hérault, Chatelain & Adam, "Deep multi-task learning with evolving weights" (ESANN 2016),
Sec. 3.2 and Fig. 1. Every schedule gives the main weight lambda_s(t); the auxiliary weight is
lambda_r(t) = 1 - lambda_s(t), and both lie in [0, 1] at every epoch t >= 0 (t = epochs completed,
0 during the first epoch):

    constant        lambda_s(t) = value                       (static weighting, Eq. 3)
    stairs  (t1)    lambda_s(t) = 0 if t < t1 else 1          (pre-training, then fine-tuning)
    lin             lambda_s(t) = t / (epochs - 1)            (0 at the first epoch, 1 at the last)
    lin_t1  (t1)    lambda_s(t) = min(t / t1, 1)              (linear until t1, then saturated)
    exp     (sigma) lambda_r(t) = exp(-t / sigma)             (lambda_s = 1 - exp(-t / sigma))

The functions are pure: they read nothing but their arguments. `Schedule` bundles a name and its
parameters; `Schedule.task_weights` turns it into the {task: weight} dict that `Trainer(task_weights=...)`
reads, so any method can weight any set of tasks with it. A bad name or parameter is a ValueError: the
settings users write are checked where they are declared (the evolving method's config, the schedules
experiment's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

SCHEDULES: dict[str, Callable[..., float]] = {}


def register_schedule(name: str):
    """Register fn(t, *, epochs, t1, sigma, value) -> lambda_s(t) under `name`."""
    def deco(fn):
        SCHEDULES[name] = fn
        return fn
    return deco


@register_schedule("constant")
def constant(t: float, *, value: float, **_) -> float:
    return value


@register_schedule("stairs")
def stairs(t: float, *, t1: float, **_) -> float:
    return 0.0 if t < t1 else 1.0


@register_schedule("lin")
def lin(t: float, *, epochs: int, **_) -> float:
    return 1.0 if epochs <= 1 else min(t / (epochs - 1), 1.0)


@register_schedule("lin_t1")
def lin_t1(t: float, *, t1: float, **_) -> float:
    return 1.0 if t1 <= 0 else min(t / t1, 1.0)


@register_schedule("exp")
def exp(t: float, *, sigma: float, **_) -> float:
    return 1.0 - math.exp(-t / sigma)


@dataclass(frozen=True)
class Schedule:
    """A named schedule with its parameters; schedule(t) -> (lambda_s, lambda_r).

    epochs: length of training (lin); t1: switch epoch (stairs, lin_t1); sigma: slope (exp);
    value: the main weight of `constant`."""

    name: str = "exp"
    epochs: int = 100
    t1: float = 10.0
    sigma: float = 5.0
    value: float = 1.0

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.epochs < 1:
            raise ValueError(f"schedule {self.name}: epochs must be >= 1, got {self.epochs}")
        if self.t1 < 0:
            raise ValueError(f"schedule {self.name}: t1 must be >= 0 epochs, got {self.t1}")
        if self.sigma <= 0:
            raise ValueError(f"schedule {self.name}: sigma must be > 0 epochs, got {self.sigma}")
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"schedule {self.name}: value is the main weight and must be in [0, 1], got {self.value}")

    def main(self, t: float) -> float:
        """lambda_s(t) for epoch t >= 0."""
        if t < 0:
            raise ValueError(f"epoch t must be >= 0, got {t}")
        return float(SCHEDULES[self.name](t, epochs=self.epochs, t1=self.t1, sigma=self.sigma, value=self.value))

    def __call__(self, t: float) -> tuple[float, float]:
        """(lambda_s(t), lambda_r(t)), summing to 1."""
        s = self.main(t)
        return s, 1.0 - s

    def task_weights(self, t: float, main: list[str], aux: list[str]) -> dict[str, float]:
        """{task: lambda_s(t) for the main tasks, lambda_r(t) for the auxiliary ones}."""
        s, r = self(t)
        return {**{k: s for k in main}, **{k: r for k in aux}}

    @property
    def label(self) -> str:
        """The paper's name: stairs_20, lin, lin_20, exp_10, constant_0.5."""
        arg = {"stairs": self.t1, "lin_t1": self.t1, "exp": self.sigma, "constant": self.value}.get(self.name)
        base = "lin" if self.name == "lin_t1" else self.name
        return base if arg is None else f"{base}_{arg:g}"
