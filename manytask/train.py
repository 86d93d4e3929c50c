"""The one training loop: minibatches, early stopping on the mean validation loss, named hooks.

The loop never asks which method it runs. A method that needs more than "forward, loss, backward,
step" returns a Hooks subclass from its builder and overrides some of:

    parameters(model)             what the optimizer updates (param groups allowed)
    before_training(trainer)      once, after the optimizer exists
    training_step(trainer, x, y)  one minibatch; the default is forward, loss, backward, step
    before_optimizer_step(trainer)  between backward and optimizer.step (e.g. gradient masks)
    after_step(trainer)           after every optimizer step
    after_epoch(trainer)          after every epoch, before validation
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data.base import MultiTaskData, Split, batches, model_input
from .metrics import mean_over_tasks, primary, task_metrics
from .tasks import Task, mean_loss


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    patience: int = 10  # epochs without improvement of the mean validation loss; 0 = no early stopping
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True
    eval_batch_size: int = 2048


class Hooks:
    """Default training behaviour; methods override what they need (see module docstring)."""

    def parameters(self, model: nn.Module):
        return [p for p in model.parameters() if p.requires_grad]

    def before_training(self, trainer: "Trainer") -> None:
        pass

    def training_step(self, trainer: "Trainer", x, y: dict[str, torch.Tensor]) -> float:
        out = trainer.model(x)
        loss = mean_loss(trainer.tasks, out, y, trainer.task_weights)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_optimizer_step(trainer)
        trainer.optimizer.step()
        return float(loss.detach())

    def before_optimizer_step(self, trainer: "Trainer") -> None:
        pass

    def after_step(self, trainer: "Trainer") -> None:
        pass

    def after_epoch(self, trainer: "Trainer") -> None:
        pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict_split(model: nn.Module, split: Split, tasks: list[Task], batch_size: int = 2048,
                  device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Raw model outputs for every example of the split: {task: (n_input, outputs)} on the CPU.

    Inputs are cut into aligned chunks; an input that has run out contributes a 0-row tensor."""
    was_training = model.training
    model.eval()
    names = list(split.inputs)
    n_max = max(split.size(k) for k in names)
    parts: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    for start in range(0, n_max, batch_size):
        x = {k: split.inputs[k][start:start + batch_size].to(device) for k in names}
        out = model(model_input(x))
        for t in tasks:
            parts[t.name].append(out[t.name].reshape(x[t.input].shape[0], t.outputs).float().cpu())
    model.train(was_training)
    return {t: torch.cat(p) for t, p in parts.items()}


def evaluate_split(model: nn.Module, split: Split, tasks: list[Task], batch_size: int = 2048,
                   device: torch.device | str = "cpu") -> tuple[dict[str, dict[str, float]], float]:
    """({task: {metric: value, "loss": value}}, mean loss over tasks) on one split."""
    out = predict_split(model, split, tasks, batch_size, device)
    table, losses = {}, []
    for t in tasks:
        y = split.labels[t.name]
        loss = float(t.loss(out[t.name], y))
        table[t.name] = {**task_metrics(t, t.predict(out[t.name]).numpy(), y.numpy()), "loss": loss}
        if not torch.isnan(y).all():
            losses.append(loss)
    return table, float(np.mean(losses)) if losses else math.nan


@dataclass
class Trainer:
    """State of one training run, handed to the hooks."""

    model: nn.Module
    data: MultiTaskData
    cfg: TrainConfig
    hooks: Hooks = field(default_factory=Hooks)
    log: Callable[[dict], None] | None = None  # receives one dict of metrics per epoch
    tasks: list[Task] | None = None  # the tasks trained (default: all of data.tasks)
    task_weights: dict[str, float] = field(default_factory=dict)  # loss weight per task (default 1)
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0

    def __post_init__(self):
        self.tasks = list(self.tasks or self.data.tasks)
        self.device = resolve_device(self.cfg.device)
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.hooks.parameters(self.model), self.cfg)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.stop = False  # a hook may set this to end training after the current epoch

    def batches(self, split: str = "train", shuffle: bool = True):
        """Minibatches of a split, moved to the device: (model input, {task: labels})."""
        for x, y in batches(self.data.split(split), self.tasks, self.cfg.batch_size, shuffle, self.generator):
            x = {k: v.to(self.device) for k, v in x.items()}
            yield model_input(x), {k: v.to(self.device) for k, v in y.items()}

    def evaluate(self, split: str = "val"):
        return evaluate_split(self.model, self.data.split(split), self.tasks, self.cfg.eval_batch_size, self.device)

    def fit(self) -> "Trainer":
        """Train up to cfg.epochs epochs; with patience > 0, stop when the mean validation loss has not
        improved by min_delta for `patience` epochs and restore the best weights."""
        cfg = self.cfg
        best_loss, best_state, waited = math.inf, None, 0
        self.model.train()
        self.hooks.before_training(self)
        bar = tqdm(range(cfg.epochs), desc="train", disable=None if cfg.progress else True,  # None: off when not a terminal
                   leave=False, dynamic_ncols=True)
        for _ in bar:
            self.epoch += 1
            t0, losses = time.perf_counter(), []
            for x, y in self.batches("train"):
                losses.append(self.hooks.training_step(self, x, y))
                self.step += 1
                self.samples_seen += next(iter(y.values())).shape[0]
                self.hooks.after_step(self)
            self.hooks.after_epoch(self)
            self.train_seconds += time.perf_counter() - t0
            table, val_loss = self.evaluate("val")
            means = mean_over_tasks(table, self.tasks)
            row = {"epoch": self.epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                   **{f"val_{k}": v for k, v in means.items() if k != "loss"},
                   "seconds": round(self.train_seconds, 3)}
            self.history.append(row)
            if self.log:
                self.log(row)
            metric = primary(self.tasks[0])
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_loss=f"{val_loss:.4f}",
                            **{f"val_{metric}": f"{means.get(metric, math.nan):.4f}"})
            if val_loss < best_loss - cfg.min_delta:
                best_loss, waited, self.best_epoch = val_loss, 0, self.epoch
                if cfg.patience > 0:
                    best_state = copy.deepcopy(self.model.state_dict())
            else:
                waited += 1
            if self.stop or (cfg.patience > 0 and waited >= cfg.patience):
                break
        bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return self

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds else math.nan


def seed_everything(seed: int) -> None:
    """Seed torch and NumPy; CPU training is then deterministic."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
