"""Three modalities in one problem, for models of three architectures (MUiR's cross-modal setting):
scikit-learn's 8x8 digits (images, 10 classes), one Tox21 assay read from SMILES characters (token ids
for an LSTM) and another Tox21 assay read from Morgan fingerprints (for an MLP)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, option
from ..registry import get_dataset, register_dataset
from ..tasks import Task
from .base import MultiTaskData, Split, combine

SPLITS = ("train", "val", "test")


@dataclass
class CrossModalConfig:
    lstm_assay: str = option("NR-AhR", "Tox21 assay read from SMILES characters (by an LSTM)")
    mlp_assay: str = option("SR-MMP", "Tox21 assay read from Morgan fingerprints (by an MLP)")
    max_len: int = option(80, "SMILES characters kept (the first max_len), left-padded with 0", low=1)
    bits: int = option(1024, "fingerprint bits", low=1)
    split_seed: int = option(0, "seed of the random train/val/test splits", low=0)


def smiles_tokens(smiles: list[str], vocab: dict[str, int], max_len: int) -> torch.Tensor:
    """SMILES -> (n, max_len) float token ids, 0 = left padding, unknown characters -> len(vocab) + 1."""
    out = torch.zeros(len(smiles), max_len)
    for i, s in enumerate(smiles):
        ids = [vocab.get(ch, len(vocab) + 1) for ch in s[:max_len]]
        if ids:
            out[i, max_len - len(ids):] = torch.tensor(ids, dtype=torch.float32)
    return out


@register_dataset("crossmodal", CrossModalConfig, "digits (images) + Tox21 SMILES characters (one assay) + Tox21 "
                  "fingerprints (another assay): three inputs, three architectures (MUiR's cross-modal setting)")
def crossmodal_data(cfg: CrossModalConfig) -> MultiTaskData:
    """Inputs digits (n, 1, 8, 8), smiles (n, max_len) token ids, tox21 (n, bits); tasks digits,
    LSTM_ASSAY(smiles), MLP_ASSAY(fingerprint). meta["vocab_size"]: token ids are below it."""
    if cfg.lstm_assay == cfg.mlp_assay:
        raise ConfigError(f"data.lstm_assay and data.mlp_assay must differ (both are {cfg.lstm_assay!r})")
    digits = get_dataset("digits").fn(get_dataset("digits").config(split_seed=cfg.split_seed))
    tox21 = get_dataset("tox21")
    tox21_fp = tox21.fn(tox21.config(tasks=(cfg.mlp_assay,), bits=cfg.bits, split_seed=cfg.split_seed))
    tox21_smiles = tox21.fn(tox21.config(tasks=(cfg.lstm_assay,), bits=8, split_seed=cfg.split_seed))
    chars = sorted({ch for s in tox21_smiles.meta["smiles"]["train"] for ch in s})
    vocab = {ch: i + 1 for i, ch in enumerate(chars)}  # 0 = padding
    lstm_task, mlp_task = f"{cfg.lstm_assay}(smiles)", f"{cfg.mlp_assay}(fingerprint)"
    smiles = MultiTaskData("smiles", [Task(lstm_task, "binary")], *(
        Split({"x": smiles_tokens(tox21_smiles.meta["smiles"][s], vocab, cfg.max_len)},
              {lstm_task: tox21_smiles.split(s).labels[cfg.lstm_assay]}) for s in SPLITS), {"vocab": vocab})
    fingerprints = MultiTaskData("tox21", [Task(mlp_task, "binary")], *(
        Split(tox21_fp.split(s).inputs, {mlp_task: tox21_fp.split(s).labels[cfg.mlp_assay]}) for s in SPLITS))
    data = combine(digits, smiles, fingerprints, name="crossmodal")
    data.meta["vocab_size"] = len(vocab) + 2
    return data
