"""Layers that methods compose; no training logic here."""
from .mlp import ACTIVATIONS, activation, mlp

__all__ = ["ACTIVATIONS", "activation", "mlp"]
