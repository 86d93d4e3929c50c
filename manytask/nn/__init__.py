"""Layers that methods compose; no training logic here.

    InterLayer, interlayers, connector_l1, count_connectors, prune_connectors, apply_masks, connector_matrices
                                  ICNN inter-layer and its connector functions (interconnected.py)
    MaskedLinear, MaskedConv2d    RSN2's task-masked layers (masked.py)
    MuirModels                    MUiR's hypermodule bank shared by any set of models (hyper.py)
    DenseBank, ConvBank           soft layer ordering's banks of shared layers (soft_order.py)
    mlp, activation, ACTIVATIONS  plain MLPs (mlp.py)
"""
from .hyper import MuirModels
from .interconnected import (InterLayer, apply_masks, connector_l1, connector_matrices, count_connectors,
                             interlayers, prune_connectors)
from .masked import MaskedConv2d, MaskedLinear
from .mlp import ACTIVATIONS, activation, mlp
from .soft_order import ConvBank, DenseBank

__all__ = ["InterLayer", "interlayers", "connector_l1", "count_connectors", "prune_connectors", "apply_masks",
           "connector_matrices", "MaskedLinear", "MaskedConv2d", "MuirModels", "DenseBank", "ConvBank",
           "mlp", "activation", "ACTIVATIONS"]
