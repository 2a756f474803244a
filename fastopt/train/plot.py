"""Drawing schedules with matplotlib (an optional dependency: ``pip install fastopt[plot]``)."""

from ..schedules import evaluate


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fastopt[plot]'") from None
    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt

    return plt


def plot_schedules(schedules, steps, path, *, title=None, ylabel="learning rate"):
    """Draw ``{label: schedule}`` over steps ``0 .. steps - 1`` into an image file at ``path``."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for label, schedule in schedules.items():
        axes.plot(range(steps), evaluate(schedule, steps), label=label, linewidth=1.5)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    if len(schedules) > 1:
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_history(history, path):
    """Loss, accuracy and learning rate per epoch (training and validation) into ``path``."""
    plt = _pyplot()
    epochs = [record["epoch"] for record in history]
    panels = [("loss", ["loss", "val_loss"]), ("accuracy", ["accuracy", "val_accuracy"]), ("learning rate", ["lr"])]
    panels = [(title, [k for k in keys if history and k in history[0]]) for title, keys in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), layout="constrained")
    for axis, (title, keys) in zip(list(getattr(axes, "flat", [axes])), panels):
        for key in keys:
            axis.plot(epochs, [record[key] for record in history], label=key, marker=".")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if len(keys) > 1:
            axis.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
