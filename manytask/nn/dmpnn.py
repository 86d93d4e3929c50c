"""A learned molecule encoder: the directed message-passing neural network (D-MPNN) of Yang et al.,
"Analyzing Learned Molecular Representations for Property Prediction", 2019, built from chemprop's modules.

    H_v = BondMessagePassing(graph)           (atoms, hidden)    chemprop.nn.BondMessagePassing, depth T
    h   = aggregation(H_v, graph.batch)       (k, hidden)        chemprop's mean, sum or norm (sum / 100)
    h   = batch_norm(h)                       optional, as chemprop's --batch-norm
    z   = [h, standardise(descriptors)]       (k, hidden + d)    with data.descriptors=true

The input is a graphs.GraphBatch (data.encoder=dmpnn). The defaults are `chemprop train`'s: hidden 300,
depth 3, no bias in the message matrices, ReLU, norm aggregation, no batch norm, no dropout.
Descriptors are standardised with buffers (mean, std) that set_descriptor_stats fills from the training
rows before training; they are saved with the weights, so a run's predictions use the same statistics.
A descriptor that is missing (NaN) becomes 0 after standardising: the training mean.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from ..config import ConfigError, option
from ..data.graphs import GraphDims, graph_dims
from ..train import Hooks

AGGREGATIONS = ("norm", "mean", "sum")
GRAPH_ENCODERS_UP_TO = 32  # methods with one D-MPNN per task (stl, muir) refuse more graph tasks
log = logging.getLogger("manytask")


@dataclass
class DMPNNConfig:
    """A method's keys for the D-MPNN that encodes a graph input (data.encoder=dmpnn); unused otherwise."""
    encoder_hidden: int = option(300, "D-MPNN (data.encoder=dmpnn): hidden size of the messages", low=1)
    encoder_depth: int = option(3, "D-MPNN: message-passing steps", low=1)
    encoder_aggregation: Literal["norm", "mean", "sum"] = option(
        "norm", "D-MPNN: atoms to molecule; norm = sum / 100, chemprop's default")
    encoder_batch_norm: bool = option(False, "D-MPNN: batch normalisation of the molecule vectors")
    encoder_dropout: float = option(0.0, "D-MPNN: dropout inside message passing", low=0, high=1, high_open=True)


class GraphEncoder(nn.Module):
    """What every D-MPNN encoder keeps besides its weights: the input it reads (input_name), the graphs'
    dims, chemprop's aggregation, and the standardisation of the descriptors (buffers saved with the
    weights). out_dim = hidden + descriptors."""

    def __init__(self, dims: GraphDims, hidden: int, depth: int, aggregation: str, input_name: str):
        super().__init__()
        from chemprop import nn as cnn
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        if hidden < 1 or depth < 1:
            raise ValueError(f"need hidden >= 1 and depth >= 1, got hidden={hidden}, depth={depth}")
        self.input_name = input_name  # the data's input this encoder reads (its descriptor statistics)
        self.dims = dims
        self.aggregation = {"norm": cnn.NormAggregation, "mean": cnn.MeanAggregation,
                            "sum": cnn.SumAggregation}[aggregation]()
        self.register_buffer("descriptor_mean", torch.zeros(dims.descriptors))
        self.register_buffer("descriptor_std", torch.ones(dims.descriptors))
        self.out_dim = hidden + dims.descriptors

    def with_descriptors(self, h: torch.Tensor, x) -> torch.Tensor:
        """h (..., k, hidden) -> (..., k, hidden + d): GraphBatch x's descriptors, standardised (a missing one,
        NaN, becomes 0), appended to every molecule vector; h itself when the encoder takes none."""
        if not self.dims.descriptors:
            return h
        d = ((x.descriptors - self.descriptor_mean) / self.descriptor_std).nan_to_num(0.0, 0.0, 0.0)  # (k, d)
        return torch.cat([h, d.to(h.dtype).expand(*h.shape[:-1], -1)], dim=-1)

    def set_descriptor_stats(self, descriptors: torch.Tensor) -> None:
        """Standardise with the mean and standard deviation of `descriptors` (n, d), NaN skipped; a constant
        or never computed descriptor gets std 1."""
        if descriptors.shape[1] != self.dims.descriptors:
            raise ValueError(f"{descriptors.shape[1]} descriptors, the encoder was built for {self.dims.descriptors}")
        x = descriptors.double()
        known = ~torch.isnan(x)
        count = known.sum(0).clamp(min=1)
        mean = torch.where(known, x, 0.0).sum(0) / count
        var = torch.where(known, (x - mean) ** 2, 0.0).sum(0) / count
        std = var.sqrt()
        self.descriptor_mean.copy_(mean.float())
        self.descriptor_std.copy_(torch.where(std > 0, std, 1.0).float())


class PadFeatures(nn.Module):
    """A chemprop graph transform: BatchMolGraph -> a shallow copy whose atom and bond features (V, E) end
    in `atom` and `bond` columns of zeros."""

    def __init__(self, atom: int, bond: int):
        super().__init__()
        self.atom, self.bond = atom, bond

    def forward(self, graph):
        graph = copy.copy(graph)  # the batch itself is left as it is
        graph.V = nn.functional.pad(graph.V, (0, self.atom))  # (atoms, atom features + atom)
        graph.E = nn.functional.pad(graph.E, (0, self.bond))  # (edges, bond features + bond)
        return graph


class DMPNN(GraphEncoder):
    """GraphBatch of k molecules -> (k, out_dim), out_dim = hidden + descriptors.

    pad_to > 1 pads the atom and bond features with zero columns up to multiples of pad_to before message
    passing, so that with hidden a multiple of it too the input sizes of the message matrices W_i (atom +
    bond features) and W_o (atom features + hidden) divide by pad_to (muir cuts them into blocks). The zero
    columns change no output."""

    def __init__(self, dims: GraphDims, hidden: int = 300, depth: int = 3, aggregation: str = "norm",
                 batch_norm: bool = False, dropout: float = 0.0, input_name: str = "x", pad_to: int = 1):
        super().__init__(dims, hidden, depth, aggregation, input_name)
        from chemprop import nn as cnn
        atom, bond = (-dims.atom % pad_to, -dims.bond % pad_to)  # zero columns added
        self.message_passing = cnn.BondMessagePassing(
            d_v=dims.atom + atom, d_e=dims.bond + bond, d_h=hidden, depth=depth, dropout=dropout,
            graph_transform=PadFeatures(atom, bond) if atom or bond else None)
        self.batch_norm = nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()

    def forward(self, x) -> torch.Tensor:
        graph = x.graph
        h = self.aggregation(self.message_passing(graph), graph.batch)  # (k, hidden)
        return self.with_descriptors(self.batch_norm(h), x)  # (k, hidden + d)


class MaskedDMPNN(GraphEncoder):
    """The D-MPNN with the message matrices of n subnetworks in task-masked layers (RSN2): W_i (atom + bond
    features -> hidden), W_h (hidden -> hidden) and W_o (atom features + hidden -> hidden), chemprop's
    names, are MaskedLinear layers over the subnetworks `names`, so that subnetworks with disjoint masks
    share no weight from the atoms up. forward(GraphBatch of k molecules, idx) -> (n, k, out_dim) for the
    subnetworks idx (indices on the layers' task axis): chemprop's BondMessagePassing run once per
    subnetwork with that subnetwork's masked matrices (torch.func.functional_call), then chemprop's
    aggregation, then the standardised descriptors. The matrices have biases (chemprop's bias=True),
    masked as every bias of a masked layer, and RSN2's initialisation; no batch norm (its statistics would
    be shared by all subnetworks)."""

    def __init__(self, names: list[str], dims: GraphDims, hidden: int = 300, depth: int = 3,
                 aggregation: str = "norm", dropout: float = 0.0, input_name: str = "x"):
        super().__init__(dims, hidden, depth, aggregation, input_name)
        from chemprop import nn as cnn

        from .masked import MaskedLinear
        self.W_i = MaskedLinear(names, dims.atom + dims.bond, hidden)
        self.W_h = MaskedLinear(names, hidden, hidden)
        self.W_o = MaskedLinear(names, dims.atom + hidden, hidden)
        # the computation only: its own weights are never used, so it is kept out of the parameters
        self._message_passing = (cnn.BondMessagePassing(d_v=dims.atom, d_e=dims.bond, d_h=hidden, bias=True,
                                                        depth=depth, dropout=dropout),)

    def forward(self, x, idx=None) -> torch.Tensor:
        graph, (mp,) = x.graph, self._message_passing
        mp.train(self.training)  # its dropout
        # each (W * M (n, in, out), b * m (n, out)) of the subnetworks idx
        matrices = {name: getattr(self, name).effective(idx) for name in ("W_i", "W_h", "W_o")}
        h = torch.stack([self.aggregation(torch.func.functional_call(
            mp, {f"{name}.{key}": value for name, (w, b) in matrices.items()
                 for key, value in (("weight", w[j].T), ("bias", b[j]))}, (graph,)), graph.batch)
            for j in range(len(matrices["W_i"][0]))])  # (n, k, hidden)
        return self.with_descriptors(h, x)  # (n, k, hidden + d), the same descriptors for every subnetwork


def graph_encoder(name: str, shape, cfg: DMPNNConfig, pad_to: int = 1) -> DMPNN | None:
    """The D-MPNN for input `name` when its example shape is a graph's (data/graphs.py), None for any other;
    pad_to as DMPNN's."""
    dims = graph_dims(shape)
    if dims is None:
        return None
    return DMPNN(dims, cfg.encoder_hidden, cfg.encoder_depth, cfg.encoder_aggregation, cfg.encoder_batch_norm,
                 cfg.encoder_dropout, name, pad_to)


def check_per_task_encoders(method: str, tasks, input_shapes: dict, cfg: DMPNNConfig, pad_to: int = 1) -> None:
    """For a method that gives every task reading a graph its own D-MPNN: one warning line on what they
    cost; a ConfigError above GRAPH_ENCODERS_UP_TO of them. Nothing without graph inputs."""
    graph_tasks = [t for t in tasks if graph_dims(input_shapes[t.input]) is not None]
    if not graph_tasks:
        return
    n, name = len(graph_tasks), graph_tasks[0].input
    with torch.random.fork_rng(devices=[]):  # one encoder built to count its parameters, the random stream kept
        size = sum(p.numel() for p in graph_encoder(name, input_shapes[name], cfg, pad_to).parameters())
    cost = f"{n} D-MPNN encoders, one per task ({n * size / 1e6:.2f} M parameters, {n} message passings per step)"
    if n > GRAPH_ENCODERS_UP_TO:
        raise ConfigError(f"{method} with data.encoder=dmpnn: {cost}, above the {GRAPH_ENCODERS_UP_TO} it builds; "
                          "use hard_sharing or icnn (one shared D-MPNN), or data.encoder=fingerprint")
    log.warning("%s: %s; hard_sharing and icnn share one", method, cost)


def encoded_width(shape, cfg: DMPNNConfig) -> int:
    """The width of the features a layer above an input of example shape `shape` reads: the D-MPNN's
    out_dim (hidden + descriptors) for a graph, the flattened size of any other input."""
    dims = graph_dims(shape)
    return math.prod(shape) if dims is None else cfg.encoder_hidden + dims.descriptors


def encoded_input(name: str, shape, cfg: DMPNNConfig) -> tuple[DMPNN | None, int]:
    """(the D-MPNN for input `name` or None, as graph_encoder; encoded_width(shape, cfg))."""
    return graph_encoder(name, shape, cfg), encoded_width(shape, cfg)


def with_encoder(name: str, shape, cfg: DMPNNConfig, above: Callable[[int], nn.Module]) -> nn.Module:
    """above(width) read from input `name`: behind a new D-MPNN for a graph input (Sequential(dmpnn,
    above(out_dim))), alone for any other input (above(flattened size))."""
    encoder, width = encoded_input(name, shape, cfg)
    return above(width) if encoder is None else nn.Sequential(encoder, above(width))


def needs_descriptor_stats(model: nn.Module) -> bool:
    return any(isinstance(m, GraphEncoder) and m.dims.descriptors for m in model.modules())


def standardise_descriptors(model: nn.Module, data) -> None:
    """Every D-MPNN encoder of `model` that takes descriptors standardises them with the training rows of its
    input (data.train.inputs[input_name].descriptors); nothing for a model without one."""
    for module in model.modules():
        if isinstance(module, GraphEncoder) and module.dims.descriptors:
            module.set_descriptor_stats(data.train.inputs[module.input_name].descriptors)


class DescriptorStats(Hooks):
    """Before training: standardise_descriptors(trainer.model, trainer.data). A method with hooks of its own
    calls standardise_descriptors in its before_training instead."""

    def before_training(self, trainer) -> None:
        standardise_descriptors(trainer.model, trainer.data)


def graph_methods() -> list[str]:
    """The registered methods that take graph inputs: those whose config inherits DMPNNConfig."""
    from ..registry import METHODS, load_all
    load_all()
    return sorted(name for name, entry in METHODS.items() if entry.config and issubclass(entry.config, DMPNNConfig))


def check_graph_method(method: str, config: type, input_shapes: dict) -> None:
    """A method takes graph inputs when its config declares the D-MPNN keys (inherits DMPNNConfig); a graph
    input for any other method is a one-line ConfigError, before anything is built."""
    graphs = [g for g, shape in input_shapes.items() if graph_dims(shape) is not None]
    if graphs and not issubclass(config, DMPNNConfig):
        raise ConfigError(f"method {method} cannot take molecule graphs (data.encoder=dmpnn); use "
                          f"data.encoder=fingerprint, or a method with a D-MPNN encoder: {', '.join(graph_methods())}")
