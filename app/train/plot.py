"""loss.png: training and held-out loss against tokens seen, from metrics.jsonl."""

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def loss_plot(metrics_path: Path, png_path: Path) -> str | None:
    """Draw the curves; None (and no file) without matplotlib or without any logged loss."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write the file only
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(metrics_path)
    train = [(r["tokens_seen"], r["loss"]) for r in rows if "loss" in r]
    held_out = sorted({r["tokens_seen"]: r["eval_loss"] for r in rows if "eval_loss" in r}.items())
    if not train and not held_out:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="tab:blue", linewidth=1)
    if held_out:
        ax.plot(*zip(*held_out, strict=True), label="held-out loss", color="tab:orange", marker="o", markersize=3)
    final = [r for r in rows if "final_eval_loss" in r]
    if final:  # the saved model on the whole held-out set, in float32
        ax.set_title(f"kept model: held-out loss {final[-1]['final_eval_loss']:.3f}, "
                     f"perplexity {final[-1]['final_eval_perplexity']:,.1f}")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return str(png_path)
