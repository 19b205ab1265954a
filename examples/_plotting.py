"""The examples' ``--plot PATH``: their loss (and learning-rate) curves, as one PNG.

matplotlib is optional (``pip install -e ".[examples]"``). It is imported only when
a plot is written, so an example run without ``--plot`` neither needs it nor pays
for its import, and it draws with the Agg backend straight into the file: no
window, no display, no pyplot state.

    args = ArgumentParser(__doc__).parse_args()          # adds --plot PATH
    ...
    if args.plot:
        plot_curves(args.plot, "Adam on y = 2x", {"loss": {"train": losses}}, xlabel="epoch")
"""

import argparse
import importlib.util
import pathlib
import sys


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` with the examples' ``--plot PATH`` option.

    Its description is the first line of ``doc`` (the example's docstring), and
    ``parse_args`` refuses ``--plot`` at once when matplotlib is missing, before
    any training runs.
    """

    def __init__(self, doc):
        super().__init__(description=doc.strip().splitlines()[0])
        self.add_argument("--plot", metavar="PATH",
                          help="write the training curves to this PNG file (needs matplotlib)")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if parsed.plot and importlib.util.find_spec("matplotlib") is None:
            self.error("--plot needs matplotlib: pip install matplotlib "
                       "(or pip install -e '.[examples]')")
        return parsed


def plot_curves(path, title, panels, xlabel="step", log=(), steps=("lr",)):
    """Draw ``panels`` as stacked line plots on one x axis and write them to the PNG ``path``.

    Parameters
    ----------
    path : str or os.PathLike
    title : str
    panels : dict
        ``{ylabel: {label: ys or (xs, ys)}}``: one subplot per ylabel, top to bottom
        (the loss, then the learning rate where a scheduler runs), one line per label;
        ``ys`` alone is drawn at x = 1, 2, ...
    xlabel : str, default "step"
    log : collection of str, default ()
        The ylabels whose axis is logarithmic.
    steps : collection of str, default ("lr",)
        The ylabels drawn as steps: a learning rate holds from one step to the next.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 2.0 + 2.5 * len(panels)), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (ylabel, series) in zip(axes, panels.items()):
        for i, (label, values) in enumerate(series.items()):
            xs, ys = values if isinstance(values, tuple) else (range(1, len(values) + 1), values)
            # a line drawn over another (two optimizers that agree) stays visible dashed
            ax.plot(list(xs), list(ys), label=label, marker="o" if len(ys) <= 30 else None,
                    markersize=3, linewidth=1.2, linestyle=("-", "--", ":", "-.")[i % 4],
                    drawstyle="steps-post" if ylabel in steps else "default")
        ax.set_ylabel(ylabel)
        if ylabel in log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
    axes[0].set_title(title)
    axes[-1].set_xlabel(xlabel)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))     # epochs and steps
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"curves written to {path}", file=sys.stderr)
