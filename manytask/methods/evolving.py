"""Evolving weights: a supervised MLP plus one denoising auto-encoder per hidden layer, weighted over time.

Belharbi, Hérault, Chatelain & Adam, "Deep multi-task learning with evolving weights", ESANN 2016.

    J(t) = lambda_s(t) J_s + lambda_r(t) J_r,   lambda_s(t) + lambda_r(t) = 1, both in [0, 1]    (Eq. 4)
    J_s  = sum over labelled i of C_s(M(x_i; w_sh, w_s), y_i)                                  (Eq. 1)
    J_r  = sum over all i of sum_k C_dae,k(R_k(f(x_{i,k-1}); w_c,k, w_d,k), x_{i,k-1})          (Eq. 5)

- M is an MLP with K hidden layers, x_{i,k} = act(W_k x_{i,k-1} + b_k), x_{i,0} = x_i, then one linear head
  per task (w_s). The coding layer w_c,k of DAE k IS hidden layer k (the same nn.Linear): w_sh = {w_c,k}.
- R_k decodes the code of the corrupted x_{k-1} back to x_{k-1} with a private linear decoder w_d,k;
  f is masking noise (each input unit zeroed with probability p); C_dae,k is the squared error
  ||R_k(f(x_{k-1})) - x_{k-1}||^2 summed over the units of x_{k-1} (the usual DAE cost).
  x_{k-1} is the representation entering layer k, taken as a constant (no gradient into layers < k):
  DAE k trains its own coding layer and decoder, as in layer-wise denoising auto-encoders.
- Both criteria are means over the rows they cover (J_s over the labelled rows of the batch, NaN labels
  skipped by Task.loss; J_r over every row), so the learning rate means the same for any batch size.
- Algorithm 1, per minibatch B: a gradient step on lambda_r(t) J_r with all of B (updates w_sh and the
  decoders), then a step on lambda_s(t) J_s with its labelled rows (updates w_sh and the heads), t = epochs
  completed. A step whose weight is 0 is not taken (a step on 0 * J is no step), so with lambda_r = 0
  the method is exactly plain supervised training of the same network.
- The paper trains with plain SGD (lr 0.01); with Adam, lambda only rescales a gradient that Adam
  normalises away, so use optimizer=sgd for the paper's schedules to mean what they say.

A molecule graph input (data.encoder=dmpnn): a learned D-MPNN (nn/dmpnn.py, the encoder_* keys) comes
first, x_0 = dmpnn(graph) (batch, encoder_hidden [+ standardised descriptors with data.descriptors=true]),
and M and the DAEs work on x_0 as on a fingerprint. So DAE 1 reconstructs the D-MPNN's embedding (with the
descriptors when it has them), taken as a constant like every x_{k-1}: J_r trains no encoder weight, J_s
trains the encoder. This is the same rule as for every layer ("the representation entering layer k"), and
it keeps J_r from pulling the encoder towards an embedding that is trivially reconstructed (a constant).
The target moves as J_s trains the encoder, so J_r can grow while J_s falls; without normalisation it
grows without bound (Tox21, recipe of docs/encoders.md: J_r 2e5 by epoch 5 and validation AUC 0.49), so
here encoder_batch_norm defaults to true (the same run: validation AUC 0.836 at epoch 8). Reconstructing the
descriptors alone was not chosen: they exist only with data.descriptors=true, and layer 1 reads
[embedding, descriptors], so they would be only part of its input.

The default schedule is `lin_t1` with t1 = 40 (the recipe tuned on Tox21, docs/tuning-tox21.md): lambda_s
rises linearly from 0 to 1 over the first 40 epochs and stays 1 up to the cap of 100 epochs, where early
stopping has not ended the run before (the tuned cap of 40 stopped other data still learning). The others are
schedule=constant|stairs|lin|exp with value, t1 and sigma (epochs; see manytask/weighting.py). When every
task is a regression, the default t1 (auto) is 10 instead: on regression tables the reconstruction tasks
cost accuracy, less with a shorter ramp (docs/evolving.md, checked on six regression data sets).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import ConfigError, option
from ..nn.dmpnn import DMPNN, DMPNNConfig, encoded_input, standardise_descriptors
from ..nn.mlp import ACTIVATIONS, activation
from ..registry import register_method
from ..tasks import Task, module_key, regression_only
from ..train import Hooks, Trainer
from ..weighting import SCHEDULES, Schedule


@dataclass
class EvolvingConfig(DMPNNConfig):
    encoder_batch_norm: bool = option(True, "D-MPNN: batch normalisation of the molecule vectors (on here: DAE 1 "
                                      "reconstructs them, and unnormalised they grow without bound)")
    widths: tuple[int, ...] = option((60, 50), "hidden layers = the coding layers of the DAEs (the paper's NN1..NN4: "
                                     "50 / 60,50 / 70,60,50 / 80,70,60,50)", low=1, min_len=1,
                                     search=("choice", ((50,), (60, 50), (70, 60, 50), (80, 70, 60, 50))))
    activation: str = option("sigmoid", "activation of the hidden layers", choices=tuple(ACTIVATIONS))
    noise: float = option(0.212, "masking probability p of the DAEs' corruption", low=0, high=1, high_open=True,
                          search=("float", 0.0, 0.5))
    schedule: str = option("lin_t1", "loss-weight schedule of lambda_s(t) (manytask/weighting.py)",
                           choices=tuple(SCHEDULES), search=("choice", tuple(SCHEDULES)))
    t1: float = option(0.0, "stairs and lin_t1: the epoch where lambda_s reaches 1; 0 = auto: 40 (the Tox21 recipe), "
                            "or 10 when every task is a regression (docs/evolving.md)", low=0,
                       search=("float", 1.0, 50.0))
    sigma: float = option(5.0, "exp: lambda_r(t) = exp(-t / sigma), t in epochs", low=0, low_open=True,
                          search=("log", 1.0, 50.0))
    value: float = option(0.5, "constant: the main weight lambda_s", low=0, high=1, search=("float", 0.1, 1.0))
    # the defaults (these and the keys above) are the recipe `manytask tune tox21 evolving` chose: docs/tuning-tox21.md
    # (t1 = 40 epochs: the supervised weight rises until then; the digit experiments set the paper's keys), but for
    # the cap of 100 epochs (early stopping ends most runs sooner): the tuned 40 stopped other data still learning
    # (docs/evolving.md, "The epoch cap on data it was not tuned on")
    train_defaults: ClassVar[dict] = {"epochs": 100, "batch_size": 32, "lr": 4.63e-3, "weight_decay": 1e-5}


class EvolvingNet(nn.Module):
    """forward(x) -> {task: (batch, task.outputs)}; x is (batch, *shape), flattened to (batch, d0), or with
    `encoder` (a DMPNN, out_dim = in_dim) a GraphBatch of `batch` molecules that it encodes to (batch, d0)."""

    def __init__(self, tasks: list[Task], in_dim: int, widths: tuple[int, ...], act: str = "sigmoid",
                 noise: float = 0.25, encoder: DMPNN | None = None):
        super().__init__()
        if encoder is not None and encoder.out_dim != in_dim:
            raise ValueError(f"in_dim={in_dim}, but the encoder gives {encoder.out_dim} features")
        self.encoder = encoder
        dims = (in_dim, *widths)
        self.tasks, self.noise = tasks, noise
        self.act = activation(act)
        # layers[k-1] is hidden layer k of M and the coding layer w_c,k of DAE k
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.decoders = nn.ModuleList(nn.Linear(b, a) for a, b in zip(dims[:-1], dims[1:]))  # w_d,k
        self.heads = nn.ModuleDict({module_key(t.name): nn.Linear(widths[-1], t.outputs) for t in tasks})  # w_s

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[x_0 (batch, d0), x_1 (batch, widths[0]), ..., x_K (batch, widths[-1])]."""
        reps = [x.reshape(x.shape[0], -1) if self.encoder is None else self.encoder(x)]  # (batch, d0)
        for layer in self.layers:
            reps.append(self.act(layer(reps[-1])))
        return reps

    def forward(self, x):
        h = self.representations(x)[-1]  # (batch, widths[-1])
        return {t.name: self.heads[module_key(t.name)](h) for t in self.tasks}

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Masking noise f: each entry of x (batch, d) zeroed with probability p."""
        return x * (torch.rand_like(x) >= self.noise) if self.noise > 0 else x

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """J_r on a batch (Eq. 5): sum over DAEs k of the squared error of R_k(f(x_{k-1})) to x_{k-1},
        summed over units and averaged over the batch's rows."""
        with torch.no_grad():
            reps = self.representations(x)  # inputs and targets of the DAEs, constants
        total = reps[0].new_zeros(())
        for k, (enc, dec) in enumerate(zip(self.layers, self.decoders)):
            target = reps[k]  # (batch, d_{k}) the representation entering layer k+1
            code = self.act(enc(self.corrupt(target)))  # (batch, d_{k+1})
            total = total + (dec(code) - target).pow(2).sum(1).mean()  # (batch, d_k) -> ()
        return total


class EvolvingHooks(Hooks):
    """Algorithm 1: per minibatch, a step on lambda_r(t) J_r (whole batch), then on lambda_s(t) J_s
    (labelled rows), each through trainer.optimizer_step, with the weights of the schedule at
    t = epochs completed.

    Several processes (torchrun): both steps run their forward through trainer.run, so each backward
    averages its own gradients over the processes before its optimizer step; J_r is weighted by the
    process's share of the rows (trainer.row_weight) and J_s by its share of each task's labels, so the two
    averages are the whole minibatch's; the J_s step is taken or skipped by every process together
    (trainer.any_rank): a process whose share has no labelled row takes it with a zero loss."""

    unused_parameters = True  # the J_r step leaves the heads without gradient, the J_s step the decoders

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.last_weights = (math.nan, math.nan)

    def before_training(self, trainer: Trainer) -> None:
        standardise_descriptors(trainer.model, trainer.data)  # a D-MPNN's descriptors: the training split's
        # the schedule's length is the run's: lin ends at the last epoch of this training
        self.schedule = dataclasses.replace(self.schedule, epochs=trainer.cfg.epochs)

    def training_step(self, trainer: Trainer, x, y: dict[str, torch.Tensor]) -> float:
        lam_s, lam_r = self.schedule(max(trainer.epoch - 1, 0))
        self.last_weights = (lam_s, lam_r)
        total = 0.0
        if lam_r > 0:  # step toward J_r with the whole batch B (updates w' = w_sh + decoders)
            j_r = lam_r * trainer.row_weight * trainer.run(trainer.model.reconstruction_loss, x)
            trainer.optimizer_step(j_r)
            total += float(j_r.detach())
        labelled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # (batch,) rows of B_s
        for t in trainer.tasks:
            labelled |= ~torch.isnan(y[t.name])
        if lam_s > 0 and trainer.any_rank(bool(labelled.any())):  # step toward J_s with B_s (w = w_sh + heads)
            out = self.forward(trainer, x[labelled])
            j_s = lam_s * self.loss(trainer, out, {k: v[labelled] for k, v in y.items()})
            trainer.optimizer_step(j_s)
            total += float(j_s.detach())
        return total


@register_method("evolving", EvolvingConfig, "MLP + one denoising auto-encoder per hidden layer (shared "
                 "coding layers), loss weights evolving over epochs (Belharbi et al. 2016)", multi_input=False)
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: EvolvingConfig):
    if len(input_shapes) != 1 or len({t.input for t in tasks}) != 1:
        raise ConfigError(f"evolving needs one input shared by every task, got inputs {sorted(input_shapes)}")
    ((name, shape),) = input_shapes.items()
    encoder, in_dim = encoded_input(name, shape, cfg)  # a D-MPNN for a graph input, else None
    model = EvolvingNet(tasks, in_dim, tuple(cfg.widths), cfg.activation, cfg.noise, encoder)
    # the schedule's epochs are set from the run's training config in before_training
    return model, EvolvingHooks(Schedule(cfg.schedule, t1=ramp_t1(cfg, tasks), sigma=cfg.sigma, value=cfg.value))


def ramp_t1(cfg: EvolvingConfig, tasks: list[Task]) -> float:
    """cfg.t1, or with t1 = 0 (auto) 40 epochs, 10 when every task is a regression: there the reconstruction
    tasks cost accuracy, less with the shorter ramp (docs/evolving.md, six regression data sets)."""
    return cfg.t1 or (10.0 if regression_only(tasks) else 40.0)
