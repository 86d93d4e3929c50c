"""MultiTaskData: train/val/test for every task, for both shapes of multi-task problem.

- One shared input with a label matrix (Tox21): inputs = {"x": (n, d)}, every task reads "x".
- Tasks with their own inputs (digits + a table): inputs = {"digits": (n1, 1, 8, 8), "wine": (n2, 13)},
  each Task names the input it reads (Task.input), and several tasks may share one input.

Labels are {task: (n_input,)} float tensors with NaN where missing, aligned with the task's input.
A model receives the single input tensor when there is one input, else the dict of inputs.

An input is a float32 tensor, or a PackedRows (molecule fingerprints kept as bits or uint8 counts) that
gives out float32 tensors when sliced or indexed by rows, one batch at a time, or a graphs.GraphRows
(molecule graphs) that gives out a graphs.GraphBatch the same way: an object with .to(device) and shape[0].
"""
from __future__ import annotations

import csv
import gzip
import math
import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import ConfigError
from ..tasks import Task


class PackedRows:
    """Rows of small non-negative integers (molecule fingerprints) held compactly, read as float32.

    Bits (width given): data (n, ceil(width / 8)) uint8, each row packed most significant bit first as
    np.packbits does: 256 bytes for a 2048-bit row instead of 8 KiB as float32. Counts (width None):
    data (n, d) uint8, 2 KiB for 2048 counts.

    x[index] with index on rows (int, slice, index or bool tensor, array or list; a tuple adds column
    indices) -> float32 tensor (k, d), (d,) for an int, on data's device; x.rows(index) -> a PackedRows
    of those rows; shape, len, dtype (float32), device, to(device) and nbytes as a tensor has them. Any
    other tensor operation (a torch function, a tensor method, np.asarray) acts on the whole unpacked
    float32 tensor, n * d * 4 bytes: correct, but the training loop and predictions only slice. Not
    torch.as_tensor(x), which reads x as a sequence of rows: x.dense() or x[:] is the tensor.
    """

    def __init__(self, data: torch.Tensor, width: int | None = None):
        data = torch.as_tensor(data)
        if data.dtype != torch.uint8 or data.dim() != 2:
            raise ValueError(f"PackedRows needs a 2-d uint8 array, got {data.dtype} of shape {tuple(data.shape)}")
        if width is not None and data.shape[1] != (width + 7) // 8:
            raise ValueError(f"{width} bits take {(width + 7) // 8} bytes a row, got {data.shape[1]}")
        self.data, self.width = data, width

    @classmethod
    def pack(cls, bits: np.ndarray) -> "PackedRows":
        """(n, d) array of 0/1 -> PackedRows of d-bit rows."""
        return cls(torch.from_numpy(np.packbits(np.asarray(bits, dtype=bool), axis=1)), bits.shape[1])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.data.shape[0], self.data.shape[1] if self.width is None else self.width))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        """Bytes held (the packed rows)."""
        return self.data.numel() * self.data.element_size()

    def dim(self) -> int:
        return 2

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __repr__(self) -> str:
        kind = f"{self.width} bits" if self.width is not None else f"{self.data.shape[1]} uint8 counts"
        return f"PackedRows({len(self)} rows of {kind}, {self.nbytes} bytes)"

    def unpack(self, data: torch.Tensor) -> torch.Tensor:
        """Packed rows (..., bytes) -> float32 (..., d)."""
        if self.width is None:
            return data.float()
        shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=data.device)  # (8,)
        bits = (data.unsqueeze(-1) >> shifts) & 1  # (..., bytes, 8)
        return bits.flatten(-2)[..., :self.width].float()

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):
            rows = self[index[0]]
            rest = index[1:] if isinstance(index[0], int) else (slice(None),) + tuple(index[1:])
            return rows[rest]
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return self.unpack(self.data[index])

    def rows(self, index) -> "PackedRows":
        """The rows at `index` (slice, index or bool tensor, array or list), still packed."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        data = self.data[index]
        return PackedRows(data.reshape(-1, self.data.shape[1]), self.width)

    def dense(self) -> torch.Tensor:
        """Every row as one float32 tensor (n, d)."""
        return self.unpack(self.data)

    def to(self, *args, **kwargs):
        """Moved to a device as PackedRows; a dtype other than float32 gives the dense tensor in it."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype != torch.float32:
            return self.dense().to(*args, **kwargs)
        return self if device is None else PackedRows(self.data.to(device, non_blocking=non_blocking), self.width)

    def cpu(self) -> "PackedRows":
        return self.to("cpu")

    def __array__(self, dtype=None, copy=None):
        x = self.dense().numpy()
        return x if dtype is None else x.astype(dtype)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return func(*_dense(args), **_dense(kwargs or {}))

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("data", "width"):  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.dense(), name)


def _dense(obj):
    """obj with every PackedRows inside (lists, tuples, dicts) replaced by its dense tensor."""
    if isinstance(obj, PackedRows):
        return obj.dense()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_dense(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _dense(v) for k, v in obj.items()}
    return obj


def take_rows(x, index):
    """x's rows at `index`: a rows container (PackedRows, graphs.GraphRows) stays one, a tensor is indexed."""
    return x[index] if isinstance(x, (torch.Tensor, np.ndarray)) else x.rows(index)


@dataclass
class Split:
    inputs: dict[str, torch.Tensor | PackedRows]  # input name -> (n_input, *shape); or graphs.GraphRows
    labels: dict[str, torch.Tensor]  # task name -> (n_input,), NaN = missing

    def size(self, name: str) -> int:
        return int(self.inputs[name].shape[0])


@dataclass
class MultiTaskData:
    name: str
    tasks: list[Task]
    train: Split
    val: Split
    test: Split
    meta: dict = field(default_factory=dict)  # e.g. featuriser settings, SMILES of each split

    def __post_init__(self):
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        for split in (self.train, self.val, self.test):
            for t in self.tasks:
                if t.input not in split.inputs:
                    raise ValueError(f"task {t.name} reads input {t.input!r}, which the data lacks")
                if split.labels[t.name].shape[0] != split.size(t.input):
                    raise ValueError(f"task {t.name}: {split.labels[t.name].shape[0]} labels for "
                                     f"{split.size(t.input)} inputs")

    @property
    def input_names(self) -> list[str]:
        return list(self.train.inputs)

    @property
    def shared_input(self) -> bool:
        return len(self.train.inputs) == 1

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """{input name: shape of one example}; a method builds its encoders from these."""
        return {k: tuple(v.shape[1:]) for k, v in self.train.inputs.items()}

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)

    def summary(self) -> str:
        sizes = "/".join(str(sum(s.size(k) for k in s.inputs)) for s in (self.train, self.val, self.test))
        return f"{self.name}: {len(self.tasks)} tasks, inputs {self.input_shapes}, train/val/test {sizes}"


def model_input(inputs: dict[str, torch.Tensor]):
    """What a model receives: the one tensor, or the dict when tasks have their own inputs."""
    return next(iter(inputs.values())) if len(inputs) == 1 else inputs


def batches(split: Split, tasks: list[Task], batch_size: int, shuffle: bool,
            generator: torch.Generator | None = None, shard: slice = slice(None)) -> Iterator[tuple[dict, dict]]:
    """Yields (inputs, labels) batches over the split.

    With one input: consecutive slices of a (shuffled) order. With several inputs, each step takes
    batch_size examples from every input; the epoch lasts ceil(largest / batch_size) steps and the
    smaller inputs start over from a new order when they run out.
    shard: the rows of each batch this process takes (several processes: slice(rank, None, world_size));
    the order, and so the global batches, are the same in every process.
    """
    names = list(split.inputs)
    sizes = {k: split.size(k) for k in names}
    steps = max(math.ceil(n / batch_size) for n in sizes.values())

    def order(n):
        return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)

    orders = {k: order(n) for k, n in sizes.items()}
    pos = {k: 0 for k in names}
    for _ in range(steps):
        idx = {}
        for k in names:
            if pos[k] >= sizes[k]:
                orders[k], pos[k] = order(sizes[k]), 0
            idx[k] = orders[k][pos[k]:pos[k] + batch_size]
            pos[k] += batch_size
        idx = {k: v[shard] for k, v in idx.items()}
        x = {k: split.inputs[k][idx[k]] for k in names}
        y = {t.name: split.labels[t.name][idx[t.input]] for t in tasks}
        yield x, y
        if len(names) == 1 and pos[names[0]] >= sizes[names[0]]:
            break


def check_fractions(fractions) -> None:
    """Three fractions (train, val, test), each >= 0, summing to 1; else a ConfigError."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ConfigError(f"data.fractions={','.join(f'{f:g}' for f in fractions)}: need three fractions "
                          "(train, val, test), each >= 0, summing to 1")


def random_split_indices(n: int, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded random train/val/test index arrays covering range(n) exactly once."""
    check_fractions(fractions)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def split_arrays(x: np.ndarray | PackedRows, y: np.ndarray, task_names: list[str],
                 parts) -> tuple[Split, Split, Split]:
    """Arrays x (n, ...) (or a rows container: PackedRows, graphs.GraphRows, kept as it is) and y (n, T)
    plus index arrays -> three Splits with one input named "x"."""
    def one(idx):
        xs = torch.as_tensor(x[idx], dtype=torch.float32) if isinstance(x, (np.ndarray, torch.Tensor)) else take_rows(x, idx)
        ys = torch.as_tensor(y[idx], dtype=torch.float32)
        return Split({"x": xs}, {name: ys[:, j].contiguous() for j, name in enumerate(task_names)})
    return tuple(one(p) for p in parts)


def combine(*datas: MultiTaskData, name: str | None = None) -> MultiTaskData:
    """Several data sets as one multi-input problem: each data set's input becomes an input named after
    the data set (or "DATA.INPUT" when it has several), and its tasks read it. Task names must differ."""
    def rename(d: MultiTaskData, k: str) -> str:
        return d.name if d.shared_input else f"{d.name}.{k}"

    inputs_names = [rename(d, k) for d in datas for k in d.input_names]
    if len(set(inputs_names)) != len(inputs_names):
        raise ValueError(f"data sets to combine need distinct names, got {[d.name for d in datas]}")
    tasks = [replace(t, input=rename(d, t.input)) for d in datas for t in d.tasks]

    def merged(split: str) -> Split:
        parts = [d.split(split) for d in datas]
        return Split({rename(d, k): v for d, p in zip(datas, parts) for k, v in p.inputs.items()},
                     {k: v for p in parts for k, v in p.labels.items()})

    meta = {d.name: d.meta for d in datas}
    return MultiTaskData(name or "+".join(d.name for d in datas), tasks, merged("train"), merged("val"),
                         merged("test"), meta)


def hide_labels(data: MultiTaskData, labelled: int, unlabelled: int | None = None, seed: int = 0) -> MultiTaskData:
    """Semi-supervised training data: `labelled` training rows keep their labels, the next `unlabelled`
    rows of a seeded order keep only their input (labels NaN), the rest of the training split is dropped;
    val and test are unchanged. unlabelled=None: every remaining training row, unlabelled. The orders are
    nested: for one seed, a larger `unlabelled` adds rows to a smaller one, and `labelled` rows come first.
    One shared input only (train rows are rows of that input)."""
    if not data.shared_input:
        raise ConfigError(f"hide_labels needs one shared input, {data.name} has {data.input_names}")
    (name, x), = data.train.inputs.items()
    n = int(x.shape[0])
    u = n - labelled if unlabelled is None else unlabelled
    if labelled < 0 or u < 0 or labelled + u > n:
        raise ConfigError(f"{data.name}: asked for {labelled} labelled + {u} unlabelled training rows, "
                         f"the training split has {n}; lower l or u (u=None takes all the rest)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:labelled + u]  # (l + u,)
    labels = {}
    for task, y in data.train.labels.items():
        y = y[order].clone()  # (l + u,)
        y[labelled:] = float("nan")
        labels[task] = y
    meta = {**data.meta, "labelled": labelled, "unlabelled": u, "label_seed": seed}
    return MultiTaskData(data.name, data.tasks, Split({name: take_rows(x, order)}, labels), data.val, data.test, meta)


GZIP_MAGIC = b"\x1f\x8b"
FLOAT32_MAX = float(np.finfo(np.float32).max)


def one_line(text: object) -> str:
    """Text for a one-line message: runs of whitespace (newlines included) become one space."""
    return " ".join(str(text).split())


def column_list(names: list[str], most: int = 30) -> str:
    """Column names for a message: "a, b, c", a name with unprintable characters as its repr, and
    "... (N in all)" after the first `most`."""
    shown = ", ".join(n if n.isprintable() else repr(n) for n in names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def read_text(path: Path) -> str:
    """A CSV file's text: gunzipped when it is gzip data (by its first bytes, whatever its name), decoded as
    UTF-8 with an optional byte-order mark. A missing, unreadable, damaged or non-UTF-8 file is a one-line
    ConfigError naming the file (and, for a decoding error, the line)."""
    if not path.exists():
        raise ConfigError(f"data file {path} does not exist; pass an existing CSV with data.path=...")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the file ({one_line(e)})") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; EOFError: truncated
            raise ConfigError(f"{path}: damaged or truncated gzip file ({one_line(e) or type(e).__name__}); "
                              "download or compress it again") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte "
                          f"0x{raw[e.start]:02x}); save the file as CSV UTF-8") from None


LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")  # a line with its ending, as io.StringIO(newline="")


def numbered_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(file line where the row starts, row) for every non-blank row of a CSV, the first one included, parsed
    as they are taken; an unreadable row is a one-line ConfigError naming the file and line."""
    reader = csv.reader(m.group() for m in LINES.finditer(read_text(path)))
    start = 1
    try:
        for row in reader:
            if row:  # a blank line is an empty row
                yield start, row
            start = reader.line_num + 1
    except csv.Error as e:
        raise ConfigError(f"{path}, line {reader.line_num}: not a readable CSV ({one_line(e)})") from None


def stream_csv_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """(header, an iterator of (file line where the row starts, data row)) of a CSV (.csv or .csv.gz,
    UTF-8 with or without a byte-order mark). Rows are parsed as they are taken: the file's text is held
    once, never a list of every row. Blank lines are skipped; header names are stripped of surrounding
    spaces. A missing, unreadable or empty file, a damaged gzip file and a header with a blank or repeated
    name are one-line ConfigErrors naming the file (and line) at once; an unreadable row and a row whose
    length differs from the header's are the same kind of error when the iterator reaches them."""
    numbered = numbered_rows(path)
    first = next(numbered, None)
    if first is None:
        raise ConfigError(f"{path} is empty; expected a header row and data rows")
    header_line, header = first[0], [h.strip() for h in first[1]]
    seen = set()
    for c, h in enumerate(header):
        if not h:
            raise ConfigError(f"{path}, line {header_line}: column {c + 1} of the header has no name; name it or "
                              "delete the column (pandas: write the CSV with index=False)")
        if h in seen:
            raise ConfigError(f"{path}, line {header_line}: column name {h!r} appears twice in the header; "
                              "rename one of them")
        seen.add(h)

    def checked() -> Iterator[tuple[int, list[str]]]:
        for line, row in numbered:
            if len(row) != len(header):
                raise ConfigError(f"{path}, line {line}: {len(row)} fields where the header has {len(header)}; "
                                  "fix the row or quote fields that contain commas")
            yield line, row

    return header, checked()


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, data rows, the file line where each row starts): stream_csv_rows(path) as lists, with its
    checks and errors."""
    header, numbered = stream_csv_rows(path)
    lines, rows = [], []
    for line, row in numbered:
        lines.append(line)
        rows.append(row)
    return header, rows, lines


def parse_number(text: str, path: Path, line: int, column: str, hint: str, missing_ok: bool = True) -> float:
    """float(text) for a finite number that float32 can hold. A blank or "nan" is NaN (a missing value)
    where missing_ok, else an error; anything else (text, inf, a magnitude beyond float32's 3.4e38) is a
    ConfigError naming the file, line and column."""
    text = text.strip()
    where = f"{path}, line {line}, column {column!r}"
    if not text:
        if missing_ok:
            return math.nan
        raise ConfigError(f"{where}: blank value; {hint}")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text[:40]!r} is not a number; {hint}") from None
    if math.isnan(value):
        if missing_ok:
            return math.nan
        raise ConfigError(f"{where}: {text[:40]!r} (not a number); {hint}")
    if not abs(value) <= FLOAT32_MAX:
        raise ConfigError(f"{where}: {text[:40]!r} is beyond the float32 range (|value| <= 3.4e38); "
                          "rescale the column")
    return value


def check_split_sizes(parts, fractions, source: object) -> None:
    """Every split with a positive fraction got at least one row; else a ConfigError naming `source`."""
    for name, part, fraction in zip(("train", "val", "test"), parts, fractions):
        if fraction > 0 and len(part) == 0:
            rows = sum(len(p) for p in parts)
            raise ConfigError(f"{source}: {rows} rows leave the {name} split empty (fractions "
                              f"{','.join(f'{f:g}' for f in fractions)}); add rows or change data.fractions")
