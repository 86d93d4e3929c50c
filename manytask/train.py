"""The one training loop: minibatches, early stopping on the validation loss (or metric), named hooks.

The loop never asks which method it runs. A method that needs more than "forward, loss, backward,
step" returns a Hooks subclass from its builder and overrides some of:

    parameters(model)             what the optimizer updates (param groups allowed)
    before_training(trainer)      once, after the optimizer exists
    forward(trainer, x)           the outputs the loss reads; default trainer.run(model, x) -> {task: output}
    loss(trainer, out, y)         the objective of one minibatch; default the mean task loss, each task
                                  weighted by trainer.batch_weights
    training_step(trainer, x, y)  one minibatch: forward, loss, trainer.optimizer_step(loss); only a method
                                  with an algorithm of its own (several steps per minibatch) overrides it
    before_optimizer_step(trainer)  between backward and optimizer.step (e.g. gradient masks)
    after_step(trainer)           after every optimizer step
    after_epoch(trainer)          after every epoch, before validation
    after_training(trainer)       once, after the last epoch (e.g. freeze what this stage trained)
    state_dict() / load_state_dict(state)  what the hooks change during training and a resumed run must
                                  get back (tensors and JSON values); default: nothing

The optimizer step itself (zero_grad, backward, before_optimizer_step, step) is written once, in
Trainer.optimizer_step. Every training forward whose output is backpropagated goes through
`trainer.run(fn, *args)`: with several processes (torchrun, manytask.distributed) it runs inside
DistributedDataParallel, whose backward averages the gradients over the processes; each process then
holds its share (every world_size-th row) of the global minibatch and `trainer.batch_weights` /
`trainer.row_weight` weight its losses so that the average is the gradient of the whole minibatch.
`train_stages` trains several stages of tasks in sequence through the same loop.

Stopping early: a non-finite training loss (checked every minibatch) or non-finite weights (checked every
epoch) raise TrainingDiverged. Within `stop_on_signals(trainer)`, SIGINT and SIGTERM make fit raise
TrainingInterrupted after the current minibatch. `Trainer.state_dict()` at the end of an epoch (the
`checkpoint` callback) and `fit(resume=state)` continue a run exactly where it stopped: same weights,
optimizer state, minibatch order, dropout masks, early-stopping state.
"""
from __future__ import annotations

import copy
import math
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .config import ConfigError, option
from .data.base import MultiTaskData, Split, batches, model_input
from .metrics import HIGHER_IS_BETTER, mean_over_tasks, primary, task_metrics
from .tasks import Task, mean_loss


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method."""

    epochs: int = option(100, "maximum training epochs", low=1)
    batch_size: int = option(128, "examples per minibatch", low=1, search=("choice", (32, 64, 128, 256)))
    lr: float = option(1e-3, "learning rate", low=0, low_open=True, search=("log", 1e-4, 1e-2))
    optimizer: Literal["adam", "adamw", "sgd"] = option(
        "adam", "adam: weight decay as an L2 term in the gradient (torch.optim.Adam); adamw: decoupled weight decay "
                "(torch.optim.AdamW); sgd: with momentum")
    weight_decay: float = option(0.0, "weight decay: adam and sgd add weight_decay x weight to its gradient (L2; for "
                                      "weights that serve one task, such as stl's networks and icnn's subnetworks, "
                                      "the L2 of that task's own objective, docs/scaling.md); adamw multiplies every "
                                      "weight by 1 - lr x weight_decay each step", low=0,
                                 search=("choice", (0.0, 1e-5, 1e-4, 1e-3)))
    momentum: float = option(0.9, "SGD momentum", low=0, high=1, high_open=True)
    patience: int = option(10, "validations without improvement of the monitored value before stopping; 0 = never "
                               "stop early", low=0)
    min_delta: float = option(0.0, "smallest improvement of the monitored value that counts", low=0)
    monitor: Literal["auto", "val_loss", "val_metric"] = option(
        "auto", "what early stopping and the best weights follow: val_loss (the mean validation loss) or val_metric "
                "(the mean validation primary metric, ties broken by the loss; every task needs the same one); "
                "auto: val_loss, as measured for every kind of task (docs/tuning-tox21.md)")
    seed: int = option(0, "seed of the initial weights, minibatch order and dropout", low=0)
    ensemble: int = option(1, "train this many models, with seeds seed, seed+1, ..., on the same split and report "
                              "their averaged predictions (docs/ensembles.md); not searched by tune", low=1)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    progress: bool = option(True, "progress: a bar on a terminal, else one line per epoch on stderr")
    eval_batch_size: int = option(2048, "examples per evaluation chunk", low=1)
    val_every: int = option(1, "validate, log and checkpoint every N epochs and after the last one; patience "
                               "counts validations", low=1)
    lr_schedule: Literal["constant", "noam"] = option(
        "constant", "noam: chemprop's schedule, lr/10 rising linearly to lr over the first 2 epochs, then decaying "
                    "exponentially to lr/10 at the last epoch (steps counted in minibatches)")
    amp: Literal["off", "bf16"] = option("off", "mixed precision: bf16 autocasts the training forward (fast on "
                                         "CUDA; on CPUs without bf16 units it is slower)")
    metric: Literal["auto", "auc", "prc_auc", "accuracy", "error", "mse", "rmse", "nrmse"] = option(
        "auto", "primary metric of tables, progress and comparisons, for the tasks whose kind has it (auto: "
                "auc for binary, accuracy for multiclass, rmse for regression); prc_auc = average precision; "
                "nrmse = RMSE / the target's training std, alike for targets of different scales")


class Hooks:
    """Default training behaviour; methods override what they need (see module docstring)."""

    # Some steps leave parameters without a gradient (a stage trains some subnetworks, a step some losses),
    # or parameters are frozen and unfrozen during training: several processes must then look for them.
    unused_parameters: bool = False

    def parameters(self, model: nn.Module):
        return [p for p in model.parameters() if p.requires_grad]

    def before_training(self, trainer: "Trainer") -> None:
        pass

    def forward(self, trainer: "Trainer", x):
        return trainer.run(trainer.model, x)

    def loss(self, trainer: "Trainer", out, y: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_loss(trainer.tasks, out, y, trainer.batch_weights)

    def training_step(self, trainer: "Trainer", x, y: dict[str, torch.Tensor]) -> float:
        loss = self.loss(trainer, self.forward(trainer, x), y)
        trainer.optimizer_step(loss)
        return float(loss.detach())

    def before_optimizer_step(self, trainer: "Trainer") -> None:
        pass

    def after_step(self, trainer: "Trainer") -> None:
        pass

    def after_epoch(self, trainer: "Trainer") -> None:
        pass

    def after_training(self, trainer: "Trainer") -> None:
        pass

    def state_dict(self) -> dict:
        """What these hooks change during training, for a resumed run: tensors and JSON values."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TrainingDiverged(RuntimeError):
    """The training loss or the weights became NaN or infinite: the model is no longer usable."""

    def __init__(self, epoch: int, what: str):
        self.epoch, self.what = epoch, what
        super().__init__(f"{what}: training diverged (a smaller lr often helps; inputs with NaN or inf values "
                         "do this too)")

    def __reduce__(self):  # picklable: rank 0 sends it to the other processes
        return TrainingDiverged, (self.epoch, self.what)


class NonFiniteOutputs(ValueError):
    """A model's outputs are NaN or infinite, so no metric can be computed from them."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped Trainer.fit (see stop_on_signals). `epoch` is the last finished epoch; the
    minibatches of the unfinished one are discarded by a resumed run."""

    def __init__(self, signum: int, epoch: int):
        self.signum, self.epoch = signum, epoch
        super().__init__(f"interrupted by {signal.Signals(signum).name} after epoch {epoch}")


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when available), cpu, cuda or cuda:N; a device this machine lacks is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          "use device=cpu or device=auto")
    return device


def monitored(cfg: TrainConfig, tasks: list[Task]) -> str:
    """What early stopping follows: "val_loss", or the primary metric every task shares (cfg.monitor=val_metric;
    tasks with different primary metrics are a ConfigError). auto is the loss for every kind of task, as
    measured on validation data (docs/tuning-tox21.md): the two tie on binary (Tox21, breast cancer),
    multiclass (digits, wine) and regression tasks (diabetes, grouped regression) with the default keys; the
    metric chose better only for ICNN's untuned defaults on one Tox21 seed of three, and a metric steps and
    saturates (wine's validation accuracy 1.0 at epoch 1). With val_metric, a metric that ties its best
    counts as better when the validation loss is lower."""
    if cfg.monitor in ("auto", "val_loss"):
        return "val_loss"
    names = sorted({primary(t) for t in tasks})
    if len(names) > 1:
        raise ConfigError(f"monitor=val_metric: the tasks' primary metrics differ ({', '.join(names)}), so no one mean "
                          "metric can be followed; use monitor=val_loss, or metric=NAME where every kind has it")
    return names[0]


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of cfg over params: tensors, or torch parameter groups (dicts).

    A group may say "tasks": N when each of its weights serves one of N tasks (stl's networks, icnn's
    subnetworks). Its weight decay is then the L2 of each task's own objective, task loss + weight_decay/2
    |w|^2, as for a network trained alone on that task: the training loss, the mean over the N tasks, takes
    1/N of each objective, so with an L2 decay (adam, sgd) the group's coefficient is weight_decay / N.
    Without the 1/N, an L2 term of fixed size against a task gradient divided by N outweighs it at many
    tasks, and Adam's normalised steps then take every such weight to 0 (docs/scaling.md). AdamW's decay
    does not pass through the loss, so it is weight_decay for every group."""
    groups = []
    for group in params:
        if isinstance(group, dict):
            group = dict(group)
            tasks = group.pop("tasks", 1)
            if cfg.optimizer != "adamw" and "weight_decay" not in group:
                group["weight_decay"] = cfg.weight_decay / tasks
        groups.append(group)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # fused: one kernel over all tensors (at 617 stl networks, 18 ms a step against 65 ms; benchmarks/stl.py)
    adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """None for lr_schedule=constant. noam (chemprop's NoamLR with its defaults): every group's learning rate
    times f(step), f rising linearly from 0.1 to 1 over 2 epochs of minibatches, then 0.1 ** (the fraction of
    the remaining minibatches done), so 0.1 at the last epoch's end."""
    if cfg.lr_schedule == "constant":
        return None
    warmup, total = 2 * steps_per_epoch, cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return 0.1 ** (min(step - warmup, total - warmup) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def predict_split(model: nn.Module, split: Split, tasks: list[Task], batch_size: int = 2048,
                  device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Raw model outputs for every example of the split: {task: (n_input, outputs)} on the CPU. The inputs
    go to `device` (default: where the model's parameters are).

    Inputs are cut into aligned chunks; an input that has run out contributes a 0-row tensor."""
    device = device or next(model.parameters()).device
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
                   device: torch.device | str | None = None) -> tuple[dict[str, dict[str, float]], float]:
    """({task: {metric: value, "loss": value}}, mean loss over tasks) on one split."""
    out = predict_split(model, split, tasks, batch_size, device)
    table, losses = {}, []
    for t in tasks:
        if not bool(torch.isfinite(out[t.name]).all()):
            raise NonFiniteOutputs(f"the model's outputs for task {t.name} are not finite")
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
    checkpoint: Callable[["Trainer"], None] | None = None  # after every finished epoch, e.g. save state_dict()
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0

    def __post_init__(self):
        self.tasks = list(self.tasks or self.data.tasks)
        self.device = distributed.rank_device(resolve_device(self.cfg.device))
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.hooks.parameters(self.model), self.cfg)
        self.scheduler = make_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)  # the same minibatch order in every process
        self.stop = False  # a hook may set this to end training after the current epoch
        self.interrupt = 0  # a signal number: stop after the current minibatch (stop_on_signals sets it)
        self.best_loss, self.best_state, self.waited = math.inf, None, 0  # early stopping (lower is better)
        self.best_val_loss = math.inf  # monitor=val_metric: the tie-break
        self.monitored = monitored(self.cfg, self.tasks)
        self.shares, self.row_weight = {}, 1.0  # this process's share of the current minibatch (share_weights)
        self.ddp = distributed_model(self.model, self.device, self.hooks.unused_parameters) if distributed.active() else None
        self.rank_random: list[dict] | None = None  # every process's random state at the last validation
        if distributed.rank() > 0:  # dropout masks of their own in the other processes
            torch.manual_seed(self.cfg.seed + 1_000_003 * distributed.rank())

    @property
    def steps_per_epoch(self) -> int:
        """Minibatches in one epoch: the largest input's training rows over batch_size, rounded up."""
        train = self.data.split("train")
        return max(math.ceil(train.size(k) / self.cfg.batch_size) for k in train.inputs)

    def run(self, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs) as a training forward: inside DistributedDataParallel when several processes
        train (the backward of its output then averages the gradients over them), with bf16 autocast when
        cfg.amp=bf16."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16"):
            return self.ddp(fn, *args, **kwargs) if self.ddp is not None else fn(*args, **kwargs)

    def any_rank(self, flag: bool) -> bool:
        """True when `flag` is true in any process (a step every process must take or skip together)."""
        if self.ddp is None:
            return flag
        return bool(distributed.all_sum(torch.tensor([float(flag)], dtype=torch.float64)).item() > 0)

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """The one optimizer step: zero_grad, backward, the hooks' before_optimizer_step, step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.hooks.before_optimizer_step(self)
        self.optimizer.step()

    def batches(self, split: str = "train", shuffle: bool = True):
        """Minibatches of a split, moved to the device: (model input, {task: labels}). With several
        processes, this process's share of each global minibatch, and batch_weights / row_weight set."""
        shard = distributed.shard(self.cfg.batch_size) if self.ddp is not None else slice(None)
        for x, y in batches(self.data.split(split), self.tasks, self.cfg.batch_size, shuffle, self.generator, shard):
            if self.ddp is not None:
                self.share_weights(y)
            x = {k: v.to(self.device) for k, v in x.items()}
            yield model_input(x), {k: v.to(self.device) for k, v in y.items()}

    def share_weights(self, y: dict[str, torch.Tensor]) -> None:
        """Loss weights of this process's share: a task's mean loss over its n_p labelled rows here, times
        P * n_p / n (n: labelled rows of the global minibatch, P processes), averages over the processes to
        the task's mean over the global minibatch; row_weight does the same for losses over all rows."""
        local = torch.tensor([float((~torch.isnan(y[t.name])).sum()) for t in self.tasks]
                             + [float(next(iter(y.values())).shape[0])], dtype=torch.float64)
        total = distributed.all_sum(local.clone())
        share = (distributed.world_size() * local / total.clamp(min=1)).tolist()
        self.shares, self.row_weight = {t.name: w for t, w in zip(self.tasks, share)}, share[-1]

    @property
    def batch_weights(self) -> dict[str, float]:
        """The loss weight of each task in the current minibatch: task_weights, times this process's share."""
        if not self.shares:
            return self.task_weights
        return {name: self.task_weights.get(name, 1.0) * w for name, w in self.shares.items()}

    def evaluate(self, split: str = "val"):
        try:
            return evaluate_split(self.model, self.data.split(split), self.tasks, self.cfg.eval_batch_size, self.device)
        except NonFiniteOutputs as e:
            raise TrainingDiverged(self.epoch, f"{e} on the {split} split after epoch {self.epoch}") from None

    @property
    def validated_epoch(self) -> int:
        """The last epoch validated, logged and checkpointed (0: none yet)."""
        return self.history[-1]["epoch"] if self.history else 0

    @property
    def finished(self) -> bool:
        """A hook asked to stop, or the monitored value has not improved for `patience` epochs."""
        return self.stop or (self.cfg.patience > 0 and self.waited >= self.cfg.patience)

    def fit(self, resume: dict | None = None) -> "Trainer":
        """Train up to cfg.epochs epochs; with patience > 0, stop when the monitored value (cfg.monitor) has not
        improved by min_delta for `patience` epochs and restore the best weights. `resume`: a state_dict()
        taken at the end of an epoch; training goes on after that epoch as if it had never stopped."""
        cfg = self.cfg
        self.model.train()
        self.hooks.before_training(self)
        if resume is not None:
            self.load_state_dict(resume)  # after before_training: the saved state replaces what it set up
        progress = EpochProgress(cfg, self.epoch, primary(self.tasks[0]))
        try:
            losses = []
            while self.epoch < cfg.epochs and not self.finished:
                self.epoch += 1
                losses += self.train_epoch()
                if self.epoch % cfg.val_every and self.epoch < cfg.epochs and not self.stop:
                    continue  # validation, log and checkpoint every val_every epochs and after the last
                row, losses = self.end_epoch(losses), []
                if self.ddp is not None:  # for the checkpoint: every process's dropout stream
                    self.rank_random = distributed.gather(random_state(self.generator))
                if self.checkpoint:
                    self.checkpoint(self)
                progress.epoch_done(row)
                signum = self.interrupt if self.ddp is None else self.sync_step(0.0, 0)[2]
                if signum:
                    raise TrainingInterrupted(signum, self.epoch)
        finally:
            progress.close()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.hooks.after_training(self)
        return self

    def train_epoch(self) -> list[float]:
        """The minibatches of one epoch -> their training losses. A non-finite loss or weights raise
        TrainingDiverged, a signal (self.interrupt) TrainingInterrupted, after the current minibatch."""
        t0, losses = time.perf_counter(), []
        for x, y in self.batches("train"):
            loss, rows, signum = self.hooks.training_step(self, x, y), next(iter(y.values())).shape[0], 0
            if self.ddp is not None:  # the global minibatch's loss and rows; a signal in any process stops all
                loss, rows, signum = self.sync_step(loss, rows)
            losses.append(loss)
            if not math.isfinite(losses[-1]):
                raise TrainingDiverged(self.epoch, f"the training loss is {losses[-1]} in epoch {self.epoch}, "
                                                   f"minibatch {len(losses)}")
            self.step += 1
            if self.scheduler is not None:
                self.scheduler.step()
            self.samples_seen += rows
            self.hooks.after_step(self)
            signum = self.interrupt if self.ddp is None else signum  # several processes: all at the same step
            if signum:  # resumable from the last validated epoch, which has the last checkpoint
                raise TrainingInterrupted(signum, self.validated_epoch)
        self.hooks.after_epoch(self)
        self.train_seconds += time.perf_counter() - t0
        return losses

    def sync_step(self, loss: float, rows: int) -> tuple[float, int, int]:
        """(loss, rows, signal) of this process -> (the global minibatch's loss, its rows, the signal that
        stops every process: SIGTERM before SIGINT, 0 for none), the same in every process."""
        signals = (signal.SIGINT, signal.SIGTERM)
        local = torch.tensor([loss, rows] + [float(self.interrupt == s) for s in signals], dtype=torch.float64)
        total = distributed.all_sum(local).tolist()
        caught = [s for s, n in zip(signals, total[2:]) if n > 0]
        return total[0] / distributed.world_size(), int(total[1]), int(caught[-1]) if caught else 0

    def validate(self) -> tuple[float, dict[str, float]]:
        """(mean validation loss, {metric: mean over tasks}); with several processes rank 0 computes them
        (or the TrainingDiverged) and every process gets its result. Non-finite weights raise TrainingDiverged."""
        result = None
        if distributed.is_main():
            try:
                if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                    raise TrainingDiverged(self.epoch, f"the weights are not finite after epoch {self.epoch}")
                table, val_loss = self.evaluate("val")
                result = (val_loss, mean_over_tasks(table, self.tasks))
            except TrainingDiverged as e:
                result = e
        result = distributed.broadcast(result) if self.ddp is not None else result
        if isinstance(result, TrainingDiverged):
            raise result
        return result

    def end_epoch(self, losses: list[float]) -> dict:
        """Validate, record the epoch's row (history, log) and update early stopping -> the row. `losses`:
        the training losses since the last validation. Non-finite weights raise TrainingDiverged."""
        val_loss, means = self.validate()
        row = {"epoch": self.epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
               **{f"val_{k}": v for k, v in means.items() if k != "loss"},
               "seconds": round(self.train_seconds, 3)}
        self.history.append(row)
        if self.log:
            self.log(row)
        value = val_loss if self.monitored == "val_loss" else row.get(f"val_{self.monitored}", math.nan)
        value = -value if self.monitored != "val_loss" and HIGHER_IS_BETTER[self.monitored] else value
        tie = self.monitored != "val_loss" and value == self.best_loss and val_loss < self.best_val_loss
        if value < self.best_loss - self.cfg.min_delta or tie:  # NaN never improves; a metric's tie: the lower loss
            self.best_loss, self.best_val_loss, self.waited, self.best_epoch = value, val_loss, 0, self.epoch
            if self.cfg.patience > 0:
                self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.waited += 1
        return row

    def state_dict(self) -> dict:
        """Everything fit needs to go on after the current (finished) epoch exactly: weights, optimizer
        state, early-stopping state, counters, history, the hooks' state and every random generator.
        Tensors and JSON values only."""
        return {"epoch": self.epoch, "step": self.step, "samples_seen": self.samples_seen,
                "train_seconds": self.train_seconds, "history": self.history, "best_epoch": self.best_epoch,
                "best_loss": self.best_loss, "best_val_loss": self.best_val_loss, "waited": self.waited, "stop": self.stop,
                "model": self.model.state_dict(), "best_model": self.best_state,
                "optimizer": self.optimizer.state_dict(), "hooks": self.hooks.state_dict(),
                **({"scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}),
                "random": random_state(self.generator), **({"random_ranks": self.rank_random} if self.rank_random else {})}

    def load_state_dict(self, state: dict) -> None:
        self.best_val_loss = state.get("best_val_loss", math.inf)  # absent from checkpoints of older versions
        for key in ("epoch", "step", "samples_seen", "train_seconds", "best_epoch", "best_loss", "waited", "stop"):
            setattr(self, key, state[key])
        self.history = list(state["history"])
        self.model.load_state_dict(state["model"])
        self.best_state = state["best_model"]
        self.optimizer.load_state_dict(state["optimizer"])
        for p in (p for group in self.optimizer.param_groups for p in group["params"]):
            wrong = [k for k, v in self.optimizer.state.get(p, {}).items() if torch.is_tensor(v) and v.dim() and v.shape != p.shape]
            if wrong:  # e.g. a layout a later version stores differently: Adam would pair moments with other weights
                raise ConfigError(f"the checkpoint's optimizer state ({wrong[0]} {tuple(self.optimizer.state[p][wrong[0]].shape)}) "
                                  f"does not fit its weight {tuple(p.shape)} (written by an earlier version of manytask?); "
                                  "start the run again, or evaluate its best weights so far with manytask evaluate RUN_DIR")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.hooks.load_state_dict(state["hooks"])
        ranks = state.get("random_ranks") or []  # a distributed run's: each process its own, when as many
        same = len(ranks) == distributed.world_size()
        set_random_state(ranks[distributed.rank()] if same else state["random"], self.generator)
        if not same and distributed.rank() > 0:
            torch.manual_seed(self.cfg.seed + 1_000_003 * distributed.rank() + self.epoch)

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds else math.nan


class Through(nn.Module):
    """A module whose forward is any function of the wrapped model: DistributedDataParallel(Through(model))
    synchronises the gradients of method calls other than model.forward (e.g. a reconstruction loss)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable, *args, **kwargs):
        return fn(*args, **kwargs)


def distributed_model(model: nn.Module, device: torch.device, unused: bool) -> nn.parallel.DistributedDataParallel:
    """DistributedDataParallel over the trainable parameters of `model`. With `unused` (Hooks.unused_parameters),
    over every parameter, also those frozen now (a method may train them later, e.g. MUiR's mixing scores),
    and a parameter without a gradient in a step keeps grad None."""
    trainable = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(p.requires_grad or unused)
    try:
        return nn.parallel.DistributedDataParallel(Through(model), device_ids=[device] if device.type == "cuda" else None,
                                                   find_unused_parameters=unused)
    finally:
        for p, t in zip(model.parameters(), trainable):
            p.requires_grad_(t)


class EpochProgress:
    """What fit shows after each epoch: a tqdm bar on a terminal; one line on stderr otherwise (logs, pipes,
    batch jobs): epoch, train loss, validation loss and metric, seconds; nothing with progress=false."""

    def __init__(self, cfg: TrainConfig, done: int, metric: str):
        terminal = cfg.progress and getattr(sys.stderr, "isatty", lambda: False)()
        self.bar = tqdm(total=cfg.epochs, initial=done, desc="train", leave=False, dynamic_ncols=True) if terminal else None
        self.lines = cfg.progress and not terminal
        self.epochs, self.metric, self.t0 = cfg.epochs, metric, time.perf_counter()

    def epoch_done(self, row: dict) -> None:
        metric = row.get(f"val_{self.metric}", math.nan)
        if self.bar is not None:
            self.bar.update(row["epoch"] - self.bar.n)  # validated every val_every epochs
            self.bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_loss=f"{row['val_loss']:.4f}",
                                 **{f"val_{self.metric}": f"{metric:.4f}"})
        elif self.lines:
            now = time.perf_counter()
            print(f"epoch {row['epoch']}/{self.epochs}  train_loss {row['train_loss']:.4f}  val_loss "
                  f"{row['val_loss']:.4f}  val_{self.metric} {metric:.4f}  {now - self.t0:.1f} s", file=sys.stderr, flush=True)
            self.t0 = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def stop_on_signals(trainer: Trainer, signums=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM ask `trainer` to stop after its current minibatch (fit raises
    TrainingInterrupted) instead of ending the process; a second signal raises it at once. The previous
    handlers are back when the block ends. Outside the main thread (no handlers there) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.interrupt:  # asked twice: stop now
            raise TrainingInterrupted(signum, trainer.validated_epoch)
        trainer.interrupt = signum

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler not set from Python


def random_state(generator: torch.Generator) -> dict:
    """The minibatch generator and the global torch (CPU, CUDA), NumPy and Python generators."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": random.getstate()}


def set_random_state(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    """Seed torch and NumPy; CPU training is then deterministic."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def train_stages(model: nn.Module, hooks: Hooks, data: MultiTaskData, stages: list[list[Task]],
                 cfgs: list[TrainConfig], on_stage: Callable[[int], None] | None = None) -> list[dict]:
    """Train the tasks of each stage in sequence with the same model and hooks (continual learning).
    After stage i (1-based) on_stage(i) runs, and the test metrics of every task trained so far are
    recorded: the forgetting curve. -> rows {stage, task, loss, <metric>: value}."""
    if len(cfgs) != len(stages):
        raise ValueError(f"{len(stages)} stages but {len(cfgs)} training configs")
    rows, done = [], []
    for i, (tasks, cfg) in enumerate(zip(stages, cfgs), 1):
        Trainer(model, data, cfg, hooks, tasks=tasks).fit()
        if on_stage:
            on_stage(i)
        done += [t for t in tasks if t not in done]
        table, _ = evaluate_split(model, data.test, done, cfg.eval_batch_size)
        rows += [{"stage": i, "task": t.name, **{k: v for k, v in table[t.name].items() if k != "n"}} for t in done]
    return rows
