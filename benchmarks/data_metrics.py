"""Channel ranking on real data: weight magnitude (l2_norm) against the data metrics.

    python benchmarks/data_metrics.py [--quick] [--part lm|digits|both] [--plot docs/data_metrics.png]

Nothing is downloaded. Two tasks:

* **Language model**: a small Llama (transformers ``LlamaForCausalLM`` from a config, byte-level
  vocabulary of 256) trained on the Python standard library's own source text
  (``sysconfig.get_paths()['stdlib']``, files in name order, the last tenth held out). Its
  attention heads and MLP channels are pruned at each sparsity; the hidden size (prunable
  too) is kept whole by the recipe, so the table compares rankings within layers. Two recipes:
  MLP channels only (heads kept whole) and heads + MLP channels. Reported: held-out perplexity per byte,
  one-shot and after a short finetune with masks.
* **Digits CNN**: the model, data and training loop of ``examples/digits_end_to_end.py``
  (scikit-learn's 8x8 digits); test accuracy one-shot, one-shot with BatchNorm statistics
  re-estimated on the calibration batches (forwards only), and after a short finetune.

``taylor`` uses each task's own loss: next-byte cross-entropy for the LM, cross-entropy
against the model's own predictions for the CNN (calibration batches carry no labels).
Every pruned model is applied at the end, and the applied model is what is measured.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import logging
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

import pruneconf
from pruneconf.table import format_table

log = logging.getLogger("data_metrics")
ROOT = Path(__file__).resolve().parents[1]
METRICS = ("l2_norm", "activation", "taylor")


@dataclasses.dataclass
class Row:
    task: str
    metric: str
    sparsity: float
    oneshot: float
    finetuned: float
    reestimated: float | None = None  # one-shot after re-estimating BatchNorm statistics (digits)


LM_PARTS = {"lm-mlp": "LM, MLP channels (heads kept)", "lm-all": "LM, heads + MLP channels"}
TITLES = {**LM_PARTS, "digits": "CNN on sklearn digits, every group"}


@dataclasses.dataclass
class Settings:
    """Sizes of one run; :func:`quick` is the CI-sized one."""

    text_bytes: int = 300_000
    hidden: int = 128
    layers: int = 2
    seq: int = 128
    batch: int = 16
    train_steps: int = 500
    finetune_steps: int = 60
    calibration_batches: int = 16
    eval_windows: int = 96
    lm_sparsities: tuple[float, ...] = (0.25, 0.5)
    digits_epochs: int = 30
    digits_finetune_epochs: int = 2
    digits_sparsities: tuple[float, ...] = (0.25, 0.5, 0.75)
    seed: int = 0


def quick(seed: int = 0) -> Settings:
    return Settings(text_bytes=120_000, hidden=64, layers=2, seq=64, batch=16, train_steps=150, finetune_steps=20,
                    calibration_batches=4, eval_windows=32, lm_sparsities=(0.25,), digits_epochs=8,
                    digits_finetune_epochs=1, digits_sparsities=(0.5,), seed=seed)


# -- language model -------------------------------------------------------------------------

def stdlib_bytes(limit: int) -> bytes:
    """The first ``limit`` bytes of the standard library's top-level modules, in name order."""
    chunks, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def lm_split(limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.frombuffer(bytearray(stdlib_bytes(limit)), dtype=torch.uint8).long()
    cut = int(0.9 * len(tokens))
    return tokens[:cut], tokens[cut:]


def llama(s: Settings) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(s.seed)
    config = LlamaConfig(vocab_size=256, hidden_size=s.hidden, intermediate_size=4 * s.hidden,
                         num_hidden_layers=s.layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=s.seq, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def windows(tokens: torch.Tensor, seq: int, count: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(tokens) - seq - 1, (count,), generator=gen)
    return torch.stack([tokens[i:i + seq] for i in starts.tolist()])


def next_byte_loss(outputs: Any, batch: dict) -> torch.Tensor:
    """Cross-entropy of each next byte: the LM's training loss, and its ``taylor`` loss."""
    logits = outputs.logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))


def train_lm(model: torch.nn.Module, tokens: torch.Tensor, steps: int, lr: float, s: Settings) -> None:
    """AdamW with a cosine schedule; build it after masks are registered."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    gen = torch.Generator().manual_seed(s.seed + 1)
    model.train()
    for _ in range(steps):
        batch = {"input_ids": windows(tokens, s.seq, s.batch, gen)}
        optimizer.zero_grad()
        next_byte_loss(model(**batch), batch).backward()
        optimizer.step()
        schedule.step()
    model.eval()


def perplexity(model: torch.nn.Module, tokens: torch.Tensor, s: Settings) -> float:
    """exp(mean next-byte cross-entropy) over fixed, evenly spaced held-out windows."""
    step = (len(tokens) - s.seq - 1) // s.eval_windows
    ids = torch.stack([tokens[i * step:i * step + s.seq] for i in range(s.eval_windows)])
    model.eval()
    with torch.no_grad():
        losses = [next_byte_loss(model(input_ids=chunk), {"input_ids": chunk}) for chunk in ids.split(16)]
    return float(torch.stack(losses).mean().exp())


def run_lm(s: Settings) -> list[Row]:
    train, held = lm_split(s.text_bytes)
    model = llama(s)
    started = time.perf_counter()
    train_lm(model, train, s.train_steps, 3e-3, s)
    dense = perplexity(model, held, s)
    log.info("LM: %d params, %d train / %d held-out bytes, trained in %.0f s, dense perplexity %.3f",
             sum(p.numel() for p in model.parameters()), len(train), len(held), time.perf_counter() - started, dense)
    gen = torch.Generator().manual_seed(s.seed + 2)
    calibration = [{"input_ids": windows(train, s.seq, 8, gen)} for _ in range(s.calibration_batches)]
    example = calibration[0]

    def measure(pruned: torch.nn.Module) -> float:
        return perplexity(pruned, held, s)

    centers = [g.center for g in pruneconf.find_groups(pruneconf.trace(model, example)).prunable]
    heads = [c for c in centers if "attn" in c]
    hidden = {c: 0.0 for c in centers if "attn" not in c and "mlp" not in c}  # the residual stream
    rows = []
    for task in LM_PARTS:
        rows.append(Row(task, "dense", 0.0, dense, dense))
        for sparsity in s.lm_sparsities:
            kept_whole = {**hidden, **({c: 0.0 for c in heads} if task == "lm-mlp" else {})}
            for metric in METRICS:
                config = {"sparsity": sparsity, "metric": metric, "groups": kept_whole}
                rows.append(prune_and_finetune(model, example, config, calibration, next_byte_loss, measure,
                                               lambda m: train_lm(m, train, s.finetune_steps, 1e-3, s), task))
    return rows


# -- digits -----------------------------------------------------------------------------------

def digits_example():
    spec = importlib.util.spec_from_file_location("digits_end_to_end", ROOT / "examples" / "digits_end_to_end.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def own_predictions_loss(outputs: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the model's own predictions: a classification loss without labels."""
    return F.cross_entropy(outputs, outputs.detach().argmax(1))


def run_digits(s: Settings) -> list[Row]:
    example = digits_example()
    torch.manual_seed(s.seed)
    x_train, y_train, x_test, y_test = example.data(s.seed)
    model = example.small_cnn()
    example.train(model, x_train, y_train, s.digits_epochs, 0.05, "dense", True)

    def measure(pruned: torch.nn.Module) -> float:
        return 100 * float((example.predict(pruned, x_test) == y_test).float().mean())

    dense = measure(model)
    log.info("digits: dense test accuracy %.2f%%", dense)
    calibration = list(x_train[:256].split(64))
    rows = [Row("digits", "dense", 0.0, dense, dense, dense)]

    def reestimated(pruned: torch.nn.Module) -> float:
        """Accuracy once BatchNorm statistics are re-estimated on the calibration batches (no training)."""
        pruned = copy.deepcopy(pruned)
        for norm in (m for m in pruned.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
        pruned.train()
        with torch.no_grad():
            for batch in calibration:
                pruned(batch)
        return measure(pruned)

    for sparsity in s.digits_sparsities:
        for metric in METRICS:
            rows.append(prune_and_finetune(
                model, x_train[:2], {"sparsity": sparsity, "metric": metric}, calibration, own_predictions_loss,
                measure, lambda m: example.train(m, x_train, y_train, s.digits_finetune_epochs, 0.02, "finetune", True),
                "digits", reestimated))
    return rows


# -- shared -----------------------------------------------------------------------------------

def prune_and_finetune(dense: torch.nn.Module, example: Any, config: dict, calibration: list, loss: Callable,
                       measure: Callable[[torch.nn.Module], float], finetune: Callable[[torch.nn.Module], None],
                       task: str, also: Callable[[torch.nn.Module], float] | None = None) -> Row:
    """Mask a copy of ``dense`` as ``config`` says, measure (and ``also``), finetune with masks,
    apply, measure the applied model."""
    model = copy.deepcopy(dense).eval()
    pruner = pruneconf.Pruner(model, example, config, calibration=calibration, loss=loss)
    pruner.register_masks()
    oneshot = measure(model)
    extra = also(model) if also is not None else None
    finetune(model)
    pruner.apply_masks()
    row = Row(task, config["metric"], config["sparsity"], oneshot, measure(model), extra)
    log.info("%s %s at %.2f: one-shot %.3f, finetuned %.3f", task, row.metric, row.sparsity, row.oneshot, row.finetuned)
    return row


def table(rows: Sequence[Row], task: str, what: str, fmt: str) -> str:
    chosen = [r for r in rows if r.task == task]
    headers = ["metric", "sparsity", f"one-shot {what}", f"finetuned {what}"]
    cells = [[r.metric, f"{r.sparsity:.2f}", fmt.format(r.oneshot), fmt.format(r.finetuned)] for r in chosen]
    if all(r.reestimated is not None for r in chosen):
        headers.insert(3, f"one-shot, BN re-estimated, {what}")
        for row, r in zip(cells, chosen):
            row.insert(3, fmt.format(r.reestimated))
    return f"{TITLES[task]}\n" + format_table(headers, cells, numeric=[False] + [True] * (len(headers) - 1))


def plot(rows: Sequence[Row], path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TITLES if any(r.task == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), dpi=100, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        dense = next(r for r in rows if r.task == task and r.metric == "dense")
        for i, metric in enumerate(METRICS):
            points = [dense] + [r for r in rows if r.task == task and r.metric == metric]
            xs = [r.sparsity for r in points]
            color = f"C{i}"
            ax.plot(xs, [r.oneshot for r in points], "o-", color=color, label=f"{metric}, one-shot")
            ax.plot(xs, [r.finetuned for r in points], "s--", color=color, label=f"{metric}, finetuned")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy, %" if task == "digits" else "held-out perplexity per byte (log)")
        if task != "digits":
            ax.set_yscale("log")
        ax.set_title(TITLES[task], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(s: Settings, part: str = "both") -> list[Row]:
    rows = []
    if part in ("lm", "both"):
        rows += run_lm(s)
    if part in ("digits", "both"):
        rows += run_digits(s)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (small model, few steps)")
    parser.add_argument("--part", choices=("lm", "digits", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write the plot to this PNG file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pruneconf").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    s = quick(args.seed) if args.quick else Settings(seed=args.seed)
    rows = run(s, args.part)
    for task in TITLES:
        if any(r.task == task for r in rows):
            print(table(rows, task, "accuracy" if task == "digits" else "perplexity",
                        "{:.2f}%" if task == "digits" else "{:.3f}"))
    if args.plot:
        plot(rows, args.plot)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
