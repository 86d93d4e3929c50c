"""Molecules as graphs for a learned encoder (data.encoder=dmpnn): chemprop's featuriser, cached arrays,
batches by row index.

Every molecule becomes a chemprop MolGraph (SimpleMoleculeMolGraphFeaturizer: 72 atom features, 14 bond
features, two directed edges per bond), computed once in worker processes and cached like the
fingerprints as graphs-KEY-vFORMAT.npz: the atoms and edges of all molecules concatenated, with the
offsets of each molecule. With data.descriptors=true every molecule also gets RDKit's 2D descriptors
(rdkit.Chem.Descriptors.descList), raw; the encoder standardises them with the training split's mean and
standard deviation.

GraphRows holds n molecules; x[index] gives a GraphBatch (a chemprop BatchMolGraph and the descriptors of
those rows) that .to(device) moves, as PackedRows gives float32 rows; batch[mask] keeps some molecules. The shape of one example is
("graph", atom features, bond features, descriptors): what a method reads to build a graph encoder
(graph_dims); a method that cannot take graphs must refuse it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .cache import cached_arrays
from .download import file_hash

GRAPH = "graph"  # the first entry of a graph input's example shape
FORMAT = 1  # version of the cached graph format
DESCRIPTOR_FORMAT = 1  # version of the cached descriptor format


class GraphDims(NamedTuple):
    """What a graph encoder needs to know of its input: feature sizes of atoms and bonds, and the number
    of molecule descriptors (0: none)."""
    atom: int
    bond: int
    descriptors: int


def graph_dims(shape) -> GraphDims | None:
    """The GraphDims of an input whose example shape is ("graph", atom, bond, descriptors); None for any
    other input (a tensor's shape)."""
    if len(shape) == 4 and shape[0] == GRAPH:
        return GraphDims(*(int(s) for s in shape[1:]))
    return None


def _featurizer():
    from chemprop.featurizers import SimpleMoleculeMolGraphFeaturizer
    return SimpleMoleculeMolGraphFeaturizer()


def _molecule(smiles: str):
    """The RDKit molecule chemprop featurises (hydrogens implicit, as `chemprop train`), None if unreadable."""
    from rdkit import RDLogger
    from chemprop.utils import make_mol
    RDLogger.DisableLog("rdApp.*")
    if not smiles:
        return None
    try:
        return make_mol(smiles, keep_h=False, add_h=False)
    except Exception:  # chemprop raises on a SMILES RDKit cannot parse
        return None


def _graph_chunk(smiles: list[str]) -> dict[str, np.ndarray]:
    """One chunk's concatenated graph arrays (see featurize_graphs); an unreadable molecule is one atom of
    zeros without edges, marked invalid."""
    featurizer = _featurizer()
    V, E, edge_index, rev, atoms, edges = [], [], [], [], [0], [0]
    valid = np.zeros(len(smiles), dtype=bool)
    for i, s in enumerate(smiles):
        mol = _molecule(s)
        if mol is None:
            g_V, g_E = np.zeros((1, featurizer.atom_fdim), np.float32), np.zeros((0, featurizer.bond_fdim), np.float32)
            g_edges, g_rev = np.zeros((2, 0), np.int64), np.zeros(0, np.int64)
        else:
            g = featurizer(mol)
            g_V, g_E, g_edges, g_rev = g.V, g.E, g.edge_index, g.rev_edge_index
            valid[i] = True
        V.append(g_V.astype(np.float32))
        E.append(g_E.astype(np.float32).reshape(-1, featurizer.bond_fdim))
        edge_index.append(g_edges.reshape(2, -1).astype(np.int32))
        rev.append(g_rev.astype(np.int32))
        atoms.append(atoms[-1] + len(g_V))
        edges.append(edges[-1] + g_E.shape[0])
    return {"V": np.concatenate(V), "E": np.concatenate(E), "edge_index": np.concatenate(edge_index, axis=1),
            "rev_edge_index": np.concatenate(rev), "atoms": np.asarray(atoms, np.int64),
            "edges": np.asarray(edges, np.int64), "valid": valid}


def concat_graph_arrays(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Graph arrays of consecutive chunks -> the arrays of all their molecules (offsets shifted)."""
    atoms, edges = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
    for p in parts:
        atoms.append(p["atoms"][1:] + atoms[-1][-1])
        edges.append(p["edges"][1:] + edges[-1][-1])
    return {"V": np.concatenate([p["V"] for p in parts]), "E": np.concatenate([p["E"] for p in parts]),
            "edge_index": np.concatenate([p["edge_index"] for p in parts], axis=1),
            "rev_edge_index": np.concatenate([p["rev_edge_index"] for p in parts]),
            "atoms": np.concatenate(atoms), "edges": np.concatenate(edges),
            "valid": np.concatenate([p["valid"] for p in parts])}


def featurize_graphs(smiles: list[str], workers: int = 1) -> dict[str, np.ndarray]:
    """SMILES (n,) -> chemprop MolGraphs of every molecule as concatenated arrays:
    V (atoms, 72) float32, E (edges, 14) float32, edge_index (2, edges) int32 and rev_edge_index (edges,)
    int32 numbered within each molecule, atoms and edges (n + 1,) int64 offsets of each molecule, valid (n,)
    bool. Computed in `workers` processes (0 = every usable core), chunk by chunk."""
    from .moleculenet import chunked_map
    if not smiles:
        raise ValueError("no SMILES to featurise")
    return concat_graph_arrays([part for _, part in chunked_map(_graph_chunk, smiles, workers, "graphs")])


def _descriptor_chunk(smiles: list[str]) -> np.ndarray:
    from rdkit.Chem import Descriptors
    out = np.full((len(smiles), len(Descriptors.descList)), np.nan, dtype=np.float64)
    for i, s in enumerate(smiles):
        mol = _molecule(s)
        if mol is not None:
            for j, (_, fn) in enumerate(Descriptors.descList):
                try:
                    out[i, j] = fn(mol)
                except Exception:  # a descriptor RDKit cannot compute for this molecule: missing
                    pass
    with np.errstate(over="ignore", invalid="ignore"):
        out = out.astype(np.float32)  # beyond float32: inf, made missing below
    out[~np.isfinite(out)] = np.nan
    return out


def descriptor_names() -> list[str]:
    from rdkit.Chem import Descriptors
    return [name for name, _ in Descriptors.descList]


def featurize_descriptors(smiles: list[str], workers: int = 1) -> np.ndarray:
    """SMILES (n,) -> RDKit 2D descriptors (n, len(Descriptors.descList)) float32, NaN where RDKit cannot
    compute one (or it is beyond float32) and for unreadable molecules."""
    from .moleculenet import chunked_map
    width = len(descriptor_names())
    out = np.full((len(smiles), width), np.nan, dtype=np.float32)
    for start, part in chunked_map(_descriptor_chunk, smiles, workers, "descriptors", chunk=500):
        out[start:start + len(part)] = part
    return out


@dataclass
class GraphBatch:
    """k molecules: graph, a chemprop BatchMolGraph (V (atoms, 72), E (edges, 14), edge_index (2, edges),
    rev_edge_index (edges,), batch (atoms,) molecule of each atom), and descriptors (k, d) float32, d = 0
    without descriptors. shape[0] = len = k; to(device) returns the batch on that device."""
    graph: object
    descriptors: torch.Tensor

    @property
    def shape(self) -> tuple:
        return (len(self.graph), GRAPH, self.graph.V.shape[1], self.graph.E.shape[1], self.descriptors.shape[1])

    def __len__(self) -> int:
        return len(self.graph)

    @property
    def device(self) -> torch.device:
        return self.graph.V.device

    def __getitem__(self, keep: torch.Tensor) -> "GraphBatch":
        """The molecules where the bool mask keep (k,) is true, in their order: their atoms and edges,
        renumbered (as a method selects the labelled rows of a batch, x[labelled])."""
        g = keep.to(self.graph.V.device)
        if g.dtype != torch.bool or g.shape != (len(self),):
            raise ValueError(f"a GraphBatch of {len(self)} molecules takes a bool mask ({len(self)},), "
                             f"got {g.dtype} {tuple(g.shape)}")
        if not bool(g.any()):
            raise IndexError("a batch of graphs needs at least one molecule")
        old = self.graph
        atoms = g[old.batch]  # (atoms,) kept atoms
        edges = atoms[old.edge_index[0]]  # (edges,) kept edges: those of kept molecules
        atom_id, edge_id, mol_id = (m.long().cumsum(0) - 1 for m in (atoms, edges, g))  # new numbers
        graph = copy.copy(old)
        graph.V, graph.E = old.V[atoms], old.E[edges]
        graph.edge_index = atom_id[old.edge_index[:, edges]]
        graph.rev_edge_index = edge_id[old.rev_edge_index[edges]]
        graph.batch = mol_id[old.batch[atoms]]
        object.__setattr__(graph, "_BatchMolGraph__size", int(g.sum()))  # len(graph): chemprop's private count
        return GraphBatch(graph, self.descriptors[g.to(self.descriptors.device)])

    def to(self, device, non_blocking: bool = False) -> "GraphBatch":
        graph = copy.copy(self.graph)  # BatchMolGraph.to moves in place: move a copy
        graph.to(device)
        return GraphBatch(graph, self.descriptors.to(device, non_blocking=non_blocking))


class GraphRows:
    """n molecules as chemprop MolGraphs (and descriptors), batched by row index as PackedRows is.

    arrays: featurize_graphs' arrays (V, E, edge_index, rev_edge_index, atoms, edges) of these rows;
    descriptors: (n, d) float32 (d = 0: none). x[index] (int, slice, index or bool tensor, array or list)
    -> GraphBatch of those rows; x.rows(index) -> GraphRows of them; shape (n, "graph", 72, 14, d); len n.
    """

    def __init__(self, arrays: dict[str, np.ndarray], descriptors: np.ndarray | None = None):
        from chemprop.data import MolGraph
        atoms, edges = arrays["atoms"], arrays["edges"]
        n = len(atoms) - 1
        self.atom_dim, self.bond_dim = int(arrays["V"].shape[1]), int(arrays["E"].shape[1])
        self.graphs = [MolGraph(arrays["V"][atoms[i]:atoms[i + 1]], arrays["E"][edges[i]:edges[i + 1]],
                                arrays["edge_index"][:, edges[i]:edges[i + 1]],
                                arrays["rev_edge_index"][edges[i]:edges[i + 1]]) for i in range(n)]
        self.descriptors = torch.as_tensor(np.zeros((n, 0), np.float32) if descriptors is None else descriptors,
                                           dtype=torch.float32)
        if self.descriptors.shape[0] != n:
            raise ValueError(f"{self.descriptors.shape[0]} descriptor rows for {n} molecules")

    @classmethod
    def _of(cls, graphs: list, descriptors: torch.Tensor, atom_dim: int, bond_dim: int) -> "GraphRows":
        rows = cls.__new__(cls)
        rows.graphs, rows.descriptors, rows.atom_dim, rows.bond_dim = graphs, descriptors, atom_dim, bond_dim
        return rows

    @property
    def shape(self) -> tuple:
        return (len(self.graphs), GRAPH, self.atom_dim, self.bond_dim, int(self.descriptors.shape[1]))

    def __len__(self) -> int:
        return len(self.graphs)

    def __repr__(self) -> str:
        return f"GraphRows({len(self)} molecules, {self.descriptors.shape[1]} descriptors)"

    def _indices(self, index) -> list[int]:
        if isinstance(index, slice):
            return list(range(len(self)))[index]
        if isinstance(index, (int, np.integer)):
            return [int(index)]
        index = torch.as_tensor(np.asarray(index) if isinstance(index, list) else index)
        if index.dtype == torch.bool:
            index = torch.nonzero(index).flatten()
        return index.reshape(-1).tolist()

    def __getitem__(self, index) -> GraphBatch:
        from chemprop.data import BatchMolGraph
        rows = self._indices(index)
        if not rows:
            raise IndexError("a batch of graphs needs at least one molecule")
        return GraphBatch(BatchMolGraph([self.graphs[i] for i in rows]), self.descriptors[rows])

    def rows(self, index) -> "GraphRows":
        rows = self._indices(index)
        return GraphRows._of([self.graphs[i] for i in rows], self.descriptors[rows], self.atom_dim, self.bond_dim)

    def to(self, *args, **kwargs) -> "GraphRows":
        """Stays on the CPU: batches (GraphBatch) are moved one at a time."""
        return self


def graph_arrays_shapes(n: int) -> dict[str, tuple]:
    """The shapes cached_arrays checks: None where a length depends on the molecules."""
    return {"V": (None, None), "E": (None, None), "edge_index": (2, None), "rev_edge_index": (None,),
            "atoms": (n + 1,), "edges": (n + 1,), "valid": (n,)}


def graph_rows(smiles: list[str], cfg) -> tuple[GraphRows, np.ndarray]:
    """SMILES (n,) -> (GraphRows of all n, valid (n,) bool), computed now (cfg: a FingerprintConfig; its
    workers and descriptors)."""
    arrays = featurize_graphs(smiles, cfg.workers)
    descriptors = featurize_descriptors(smiles, cfg.workers) if cfg.descriptors else None
    return GraphRows(arrays, descriptors), arrays["valid"]


def cached_graphs(path, smiles: list[str], cfg) -> tuple[GraphRows, np.ndarray]:
    """graph_rows(smiles, cfg), kept in the cache unless cfg.cache is false: graphs-KEY-vFORMAT.npz and,
    with cfg.descriptors, descriptors-KEY-rdkitVERSION-vFORMAT.npz (KEY: the file's sha256 and SMILES
    column; an RDKit version computes its own descriptors)."""
    if not cfg.cache:
        return graph_rows(smiles, cfg)
    import chemprop
    from rdkit import __version__ as rdkit_version
    key = f"{file_hash(path)[:16]}-{cfg.smiles_col}"
    arrays = cached_arrays(f"graphs-{key}-chemprop{chemprop.__version__}-v{FORMAT}.npz",
                           lambda: featurize_graphs(smiles, cfg.workers), graph_arrays_shapes(len(smiles)))
    descriptors = None
    if cfg.descriptors:
        descriptors = cached_arrays(
            f"descriptors-{key}-rdkit{rdkit_version}-v{DESCRIPTOR_FORMAT}.npz",
            lambda: {"descriptors": featurize_descriptors(smiles, cfg.workers)},
            {"descriptors": (len(smiles), len(descriptor_names()))})["descriptors"]
    return GraphRows(arrays, descriptors), arrays["valid"].astype(bool)
