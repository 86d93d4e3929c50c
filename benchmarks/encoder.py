"""Training-step speed of manytask's D-MPNN model against chemprop's own MPNN (the reference, measured in
the same run, on the same batches of Tox21 molecules).

manytask: hard_sharing with data.encoder=dmpnn, widths=300, dropout=0 (chemprop's default model: D-MPNN of
hidden 300 and depth 3, norm aggregation, one hidden layer of 300, 12 outputs), its training step: mean
loss over the tasks, zero_grad, backward, Adam step (Trainer's default training_step). chemprop: chemprop.models.MPNN
of the same message passing, aggregation and FFN, its training_step's forward and loss (fingerprint,
predictor.train_step, the masked BCE criterion), then the same zero_grad, backward, Adam step.

Three timings per contender: the step on a batch already built; "batch + step" with the batch built
from the stored molecules each time (manytask: GraphRows[index]; chemprop: its MoleculeDataset and
collate_batch, as its DataLoader does); "above the encoder": forward and backward of only what sits on
the molecule vectors (manytask: first layer, trunk, 12 heads, mean task loss; chemprop: its FFN and masked
BCE), on the same (batch, 300) vectors. Samples/s and the ratio manytask / chemprop (> 1: manytask faster).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encoder.py [--batch 50 --steps 20 --rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

from manytask.allocator import tune_allocator  # noqa: E402

tune_allocator()  # before torch's first CPU allocation, as the `manytask` command does
import torch  # noqa: E402

from manytask.runs import create_model, load_dataset  # noqa: E402
from manytask.tasks import mean_loss  # noqa: E402
from manytask.train import TrainConfig, Trainer  # noqa: E402

STEP, BUILD, ABOVE = "step", "batch + step", "above the encoder"
MODES = (STEP, BUILD, ABOVE)


def chemprop_model(n_tasks: int):
    """chemprop's default classification MPNN (as `chemprop train` builds it)."""
    from chemprop import nn as cnn
    from chemprop.models import MPNN
    return MPNN(cnn.BondMessagePassing(), cnn.NormAggregation(),
                cnn.BinaryClassificationFFN(n_tasks=n_tasks, input_dim=300, hidden_dim=300, n_layers=1),
                batch_norm=False)


def chemprop_step_fn(mpnn, batch):
    """One chemprop training step on `batch` (its TrainingBatch): MPNN.training_step's forward and loss,
    then zero_grad, backward, Adam step (lr 1e-3)."""
    opt = torch.optim.Adam(mpnn.parameters(), lr=1e-3)
    mpnn.train()

    def step(b=None):
        bmg, V_d, X_d, targets, weights, lt_mask, gt_mask = b or batch
        mask = targets.isfinite()
        preds = mpnn.predictor.train_step(mpnn.fingerprint(bmg, V_d, X_d))
        loss = mpnn.criterion(preds, targets.nan_to_num(nan=0.0), mask, weights, lt_mask, gt_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--steps", type=int, default=20, help="timed steps per contender per round")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    from chemprop.data import MoleculeDatapoint, MoleculeDataset, collate_batch

    torch.manual_seed(0)
    data = load_dataset("tox21", encoder="dmpnn")
    rows, tasks = data.train.inputs["x"], data.tasks
    labels = torch.stack([data.train.labels[t.name] for t in tasks], 1)  # (n, T), NaN = missing
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    index = [order[i * a.batch:(i + 1) * a.batch] for i in range(a.steps)]  # the batches, the same for both

    model, _ = create_model("hard_sharing", tasks, data.input_shapes, widths=(300,), dropout=0.0)
    smiles = data.meta["smiles"]["train"]
    points = [MoleculeDatapoint.from_smi(s, y.numpy()) for s, y in zip(smiles, labels)]
    dataset = MoleculeDataset(points)
    dataset.cache = True  # featurise once, as the training rows of manytask are
    mpnn = chemprop_model(len(tasks))

    trainer = Trainer(model, data, TrainConfig(device="cpu", progress=False))  # Adam, lr 1e-3
    model.train()

    def manytask_batch(i):
        return rows[i], {t.name: labels[i, j] for j, t in enumerate(tasks)}

    z = torch.randn(a.batch, 300, requires_grad=True)  # molecule vectors: what the encoder gives the layers above

    def manytask_step(k: int, mode: str):
        if mode == ABOVE:  # the input's first layer, the trunk, the heads and the mean task loss
            h = model.trunk(model.encoders["x"][1](z))
            mean_loss(tasks, {t.name: model.heads[t.name](h) for t in tasks}, ours[k][1]).backward()
            return
        x, y = manytask_batch(index[k]) if mode == BUILD else ours[k]
        trainer.hooks.training_step(trainer, x, y)

    def chemprop_step(k: int, mode: str):
        if mode == ABOVE:  # its FFN and masked BCE
            bmg, V_d, X_d, targets, weights, lt_mask, gt_mask = theirs[k]
            mpnn.criterion(mpnn.predictor.train_step(z), targets.nan_to_num(nan=0.0), targets.isfinite(), weights,
                           lt_mask, gt_mask).backward()
            return
        theirs_step(collate_batch([dataset[j] for j in index[k].tolist()]) if mode == BUILD else theirs[k])

    ours = [manytask_batch(i) for i in index]
    theirs = [collate_batch([dataset[k] for k in i.tolist()]) for i in index]
    theirs_step = chemprop_step_fn(mpnn, theirs[0])
    contenders = {"manytask": manytask_step, "chemprop": chemprop_step}
    times = {(name, mode): [] for name in contenders for mode in MODES}
    for _ in range(a.rounds):  # interleaved rounds, so that load from other processes hits every contender
        for mode in MODES:
            for name, fn in contenders.items():
                fn(0, mode)  # warm-up
                t0 = time.perf_counter()
                for k in range(a.steps):
                    fn(k, mode)
                times[name, mode].append((time.perf_counter() - t0) / a.steps)
    import chemprop
    print(f"D-MPNN training step on Tox21 batches of {a.batch}, hidden 300, depth 3, 12 tasks; torch "
          f"{torch.__version__}, chemprop {chemprop.__version__}, {torch.get_num_threads()} thread(s); median of "
          f"{a.rounds} rounds x {a.steps} steps")
    print(f"{'':<20}{'manytask samples/s':>20}{'chemprop samples/s':>20}{'ratio':>8}")
    for mode in MODES:
        ours_s, theirs_s = (a.batch / statistics.median(times[n, mode]) for n in contenders)
        print(f"{mode:<20}{ours_s:>20.0f}{theirs_s:>20.0f}{ours_s / theirs_s:>8.2f}")


if __name__ == "__main__":
    main()
