"""An MLP on scikit-learn's handwritten digits, with a checkpoint and a resume that match.

A training run as one would write it with torch.optim, on a real (small) data
set: ``sklearn.datasets.load_digits`` (1797 images of 8x8 pixels, 10 classes,
shipped with scikit-learn: no download), split 75/25 with a fixed seed, and a
64-128-10 ReLU MLP trained with

- AdamW in two parameter groups: weight decay on the weights, none on the biases;
- OneCycleLR, stepped after every batch (it also cycles Adam's beta1);
- ``numbaopt.utils.clip_grad_norm_`` before every step;
- a checkpoint (``numbaopt.save``: parameters, optimizer and scheduler state) in the
  middle of the run.

Then it shows the resume: everything is built again from scratch (other random
weights), ``numbaopt.load`` restores the checkpoint, and the remaining epochs run.
Each epoch's batch order is drawn from a generator seeded by the epoch number, so
the resumed run sees the same batches as the uninterrupted one, and it ends with
bit-for-bit the same parameters and the same accuracy; the script checks that.

    pip install scikit-learn tqdm matplotlib      # or: pip install -e ".[examples]"
    python examples/digits_mlp.py                 # a few seconds, about 98% test accuracy
    python examples/digits_mlp.py --plot digits.png --checkpoint digits.npz

A tqdm progress bar over the epochs goes to stderr (plain lines there when tqdm is
not installed); stdout gets the results. ``--plot PATH`` writes the loss, accuracy
and lr curves, the resumed run drawn over the uninterrupted one (needs matplotlib).
"""

import os
import sys
import tempfile
import time

import numpy as np

import numbaopt
from numbaopt import nn, optim
from numbaopt.optim.lr_scheduler import OneCycleLR
from numbaopt.utils import clip_grad_norm_

SEED = 0
HIDDEN = 128
BATCH_SIZE = 64
MAX_LR = 2e-2
WEIGHT_DECAY = 1e-2
MAX_NORM = 1.0


def load_data(seed=SEED):
    """Pixels as float32 in [0, 1], labels as int64: ``(x_train, y_train, x_test, y_test)``."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("digits_mlp.py needs scikit-learn for its data set: pip install scikit-learn "
                 "(or pip install -e '.[examples]')")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)        # pixel values are 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype(np.int64), test_size=0.25, random_state=seed,
        stratify=digits.target)
    return x_train, y_train, x_test, y_test


class MLP(nn.Module):
    def __init__(self, rng):
        self.fc1 = nn.Linear(64, HIDDEN, rng=rng)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(HIDDEN, 10, rng=rng)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))

    def backward(self, grad_output):
        return self.fc1.backward(self.relu.backward(self.fc2.backward(grad_output)))


def build(seed, epochs, steps_per_epoch):
    """A fresh model, optimizer and scheduler: ``(model, optimizer, scheduler)``."""
    model = MLP(np.random.default_rng(seed))
    named = list(model.named_parameters())
    optimizer = optim.AdamW([
        {"params": [p for name, p in named if not name.endswith("bias")],
         "weight_decay": WEIGHT_DECAY},
        {"params": [p for name, p in named if name.endswith("bias")], "weight_decay": 0.0},
    ], lr=MAX_LR)
    scheduler = OneCycleLR(optimizer, max_lr=MAX_LR, epochs=epochs,
                           steps_per_epoch=steps_per_epoch)
    return model, optimizer, scheduler


def evaluate(model, criterion, x, y):
    """``(mean loss, accuracy)`` of the model on ``(x, y)``."""
    logits = model(x)
    return criterion(logits, y).item(), float(np.mean(logits.argmax(axis=1) == y))


def progress(first, epochs, desc):
    """The epochs ``first + 1 .. epochs``, behind a tqdm bar when tqdm is installed."""
    epochs_left = range(first + 1, epochs + 1)
    try:
        from tqdm import tqdm
    except ImportError:
        return epochs_left
    return tqdm(epochs_left, desc=desc, initial=first, total=epochs, unit="epoch",
                file=sys.stderr)


def train(model, optimizer, scheduler, data, epochs, first=0, checkpoint=None, desc="train"):
    """Train epochs ``first + 1 .. epochs``; write ``checkpoint = (epoch, path)`` after that epoch.

    Returns the curves: per batch ``(epoch fraction, lr)``, per epoch
    ``(epoch, train loss, train accuracy, test loss, test accuracy)``.
    """
    x_train, y_train, x_test, y_test = data
    criterion = nn.CrossEntropyLoss()
    steps_per_epoch = -(-len(x_train) // BATCH_SIZE)
    batches, epoch_rows = [], []
    bar = progress(first, epochs, desc)
    for epoch in bar:
        # the batch order depends on the epoch alone, so a resumed run draws the same batches
        order = np.random.default_rng([SEED, epoch]).permutation(len(x_train))
        for k, start in enumerate(range(0, len(x_train), BATCH_SIZE)):
            rows = order[start:start + BATCH_SIZE]
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad()
            loss = criterion(model(x_train[rows]), y_train[rows])
            model.backward(criterion.backward())
            clip_grad_norm_(model.parameters(), max_norm=MAX_NORM)
            optimizer.step()
            scheduler.step()
            batches.append((epoch - 1 + (k + 1) / steps_per_epoch, lr))
        row = (epoch, *evaluate(model, criterion, x_train, y_train),
               *evaluate(model, criterion, x_test, y_test))
        epoch_rows.append(row)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{row[1]:.4f}", test_acc=f"{row[4]:.4f}", lr=f"{lr:.2e}")
        else:
            print(f"{desc} epoch {epoch}/{epochs}: loss {row[1]:.4f}, test accuracy "
                  f"{row[4]:.4f}, lr {lr:.2e}", file=sys.stderr)
        if checkpoint is not None and epoch == checkpoint[0]:
            numbaopt.save(checkpoint[1], optimizer, scheduler)
    return batches, epoch_rows


def parameters(model):
    return np.concatenate([p.data.ravel() for p in model.parameters()])


def main(argv=None):
    from _plotting import ArgumentParser     # examples/_plotting.py, beside this script

    parser = ArgumentParser(__doc__)
    parser.add_argument("--epochs", type=int, default=20, help="epochs in all (default 20)")
    parser.add_argument("--checkpoint-epoch", type=int, default=None, metavar="EPOCH",
                        help="write the checkpoint after this epoch (default: half way)")
    parser.add_argument("--checkpoint", metavar="PATH", default=None,
                        help="keep the checkpoint at PATH (default: a temporary file)")
    args = parser.parse_args(argv)
    epochs = args.epochs
    middle = epochs // 2 if args.checkpoint_epoch is None else args.checkpoint_epoch
    if not 1 <= middle < epochs:
        parser.error(f"--checkpoint-epoch must be between 1 and {epochs - 1}")

    data = load_data()
    x_train, _, x_test, _ = data
    steps_per_epoch = -(-len(x_train) // BATCH_SIZE)
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8 pixels, "
          f"10 classes")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or os.path.join(tmp, "digits_mlp.npz")
        start = time.perf_counter()
        model, optimizer, scheduler = build(SEED, epochs, steps_per_epoch)
        print(f"MLP 64-{HIDDEN}-10 ({optimizer.arena.size} parameters), AdamW(weight_decay="
              f"{WEIGHT_DECAY} on the weights, 0 on the biases), OneCycleLR(max_lr={MAX_LR}), "
              f"clip_grad_norm_({MAX_NORM}), {epochs} epochs of {steps_per_epoch} batches")
        batches, epoch_rows = train(model, optimizer, scheduler, data, epochs,
                                    checkpoint=(middle, path))
        seconds = time.perf_counter() - start
        final = epoch_rows[-1]
        print(f"epoch {epochs}: train loss {final[1]:.4f}, train accuracy {final[2]:.4f}, "
              f"test accuracy {final[4]:.4f} ({seconds:.1f} s)")

        # The resume: everything from scratch, other random weights, then the checkpoint.
        model2, optimizer2, scheduler2 = build(SEED + 1, epochs, steps_per_epoch)
        numbaopt.load(path, optimizer2, scheduler2)
        print(f"checkpoint after epoch {middle} ({os.path.getsize(path)} bytes) loaded into a "
              f"fresh model, optimizer and scheduler")
        resumed_batches, resumed_rows = train(model2, optimizer2, scheduler2, data, epochs,
                                              first=middle, desc="resumed")
    resumed = resumed_rows[-1]
    print(f"resumed run, epochs {middle + 1}-{epochs}: train accuracy {resumed[2]:.4f}, "
          f"test accuracy {resumed[4]:.4f}")
    same = np.array_equal(parameters(model), parameters(model2))
    print(f"resumed run ends with the same parameters as the uninterrupted run: {same}")
    assert same and resumed[1:] == final[1:]

    if args.plot:
        from _plotting import plot_curves

        def column(rows, i):
            return [r[0] for r in rows], [r[i] for r in rows]

        plot_curves(args.plot, f"digits: 64-{HIDDEN}-10 MLP, AdamW + OneCycleLR, "
                    f"resumed after epoch {middle}",
                    {"cross-entropy loss": {"train": column(epoch_rows, 1),
                                            "test": column(epoch_rows, 3),
                                            "resumed: test": column(resumed_rows, 3)},
                     "accuracy": {"train": column(epoch_rows, 2), "test": column(epoch_rows, 4),
                                  "resumed: test": column(resumed_rows, 4)},
                     "lr": {"uninterrupted": column(batches, 1),
                            "resumed": column(resumed_batches, 1)}},
                    xlabel="epoch", log=("cross-entropy loss",))


if __name__ == "__main__":
    main()
