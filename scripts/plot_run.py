#!/usr/bin/env python3
"""Draws a run's curves from <run_dir>/metrics.jsonl to a PNG: loss (train and every valid/* loss), learning rate,
and tokens/s (with MFU on a second axis when known). A user tool (needs matplotlib); CI does not run it.

  python3 scripts/plot_run.py runs/tiny-nl -o runs/tiny-nl/curves.png

metrics.jsonl is appended to across resumes: a {"kind":"resume","step":N} line drops earlier entries at steps >= N,
and a step logged twice keeps its last value, so the curves show the timeline the final model actually followed.
"""
import argparse
import json
import os
import sys


def load_run(path):
    """Returns ({field: {step: value}} of train lines, {tag: {step: value}} of scalar lines)."""
    train, scalars = {}, {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                # A process killed mid-write can leave a torn last line; anything else is a real problem.
                print(f"{path}:{lineno}: skipping a line that is not JSON", file=sys.stderr)
                continue
            kind, step = j.get("kind"), j.get("step")
            if kind == "resume":
                for series in list(train.values()) + list(scalars.values()):
                    for s in [s for s in series if s >= step]:
                        del series[s]
            elif kind == "train":
                for key, value in j.items():
                    if key not in ("kind", "step", "time") and value is not None:
                        train.setdefault(key, {})[step] = value
            elif kind == "scalar" and j.get("value") is not None:
                scalars.setdefault(j["tag"], {})[step] = j["value"]
    return train, scalars


def xy(series):
    steps = sorted(series)
    return steps, [series[s] for s in steps]


def smooth(values, alpha):
    """Exponential moving average with TensorBoard-style debiasing; alpha 0 leaves the values as they are."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha ** i) if alpha > 0 else v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("-o", "--output", help="PNG to write (default: <run_dir>/curves.png)")
    ap.add_argument("--smooth", type=float, default=0.0, help="EMA factor for the train loss, 0..0.999 (default 0)")
    ap.add_argument("--title", help="figure title (default: the run dir's name)")
    args = ap.parse_args()

    path = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"plot_run: no {path} (was the run started with logging.jsonl: true?)")
    train, scalars = load_run(path)
    if not train.get("loss") and not scalars:
        sys.exit(f"plot_run: {path} holds no train or scalar entries yet")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr, ax_tok) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    fig.suptitle(args.title or os.path.basename(os.path.normpath(args.run_dir)))

    if train.get("loss"):
        steps, loss = xy(train["loss"])
        if args.smooth > 0:
            ax_loss.plot(steps, loss, color="C0", alpha=0.25, linewidth=0.8)
            ax_loss.plot(steps, smooth(loss, args.smooth), color="C0", label=f"train (EMA {args.smooth})")
        else:
            ax_loss.plot(steps, loss, color="C0", label="train")
    for i, tag in enumerate(sorted(t for t in scalars if t.endswith("loss"))):
        steps, values = xy(scalars[tag])
        ax_loss.plot(steps, values, "o-", color=f"C{i + 1}", markersize=3, label=tag)
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()

    if train.get("lr"):
        ax_lr.plot(*xy(train["lr"]), color="C3")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(alpha=0.3)

    if train.get("tokens_per_s"):
        ax_tok.plot(*xy(train["tokens_per_s"]), color="C2", label="tokens/s")
    ax_tok.set_ylabel("tokens/s")
    ax_tok.set_xlabel("step")
    ax_tok.grid(alpha=0.3)
    if train.get("mfu"):
        ax_mfu = ax_tok.twinx()
        steps, mfu = xy(train["mfu"])
        ax_mfu.plot(steps, [100 * m for m in mfu], color="C4", alpha=0.7, label="MFU")
        ax_mfu.set_ylabel("MFU (%)")
        handles = ax_tok.get_legend_handles_labels()[0] + ax_mfu.get_legend_handles_labels()[0]
        ax_tok.legend(handles, [h.get_label() for h in handles], loc="lower right")

    fig.tight_layout()
    out = args.output or os.path.join(args.run_dir, "curves.png")
    fig.savefig(out, dpi=110)
    print(f"plot_run: wrote {out}")


if __name__ == "__main__":
    main()
