"""Attributions: sequences per second of in-silico mutagenesis (ISM) and integrated gradients.

    python -m benchmarks.interpret                # 1000 x 101 bp (DNA BiLSTM), 1000 x 300 bp (TF CNN): 7 min on 2 cores
    python -m benchmarks.interpret --sequences 8 --torch-sequences 4 --naive-sequences 1 --rounds 1

Both models at their pipelines' default sizes (DNA: `dna.Config().hidden_dim`; TF CNN:
`tf_binding.Config(window_length=300)`), with PyTorch's random initial weights ported to
JAX by `molml_jax.interop`, so that every method computes the same numbers. The scalar of
a sequence is the DNA model's logit and the CNN's sum of scores over positions. On random
one-hot sequences (no N), ISM by:

  (a) molml_jax: `interpret.in_silico_mutagenesis` (batches of 8 sequences; their 3L
      mutants are built on the device and predicted in passes of `rows_per_pass(L)`).
  (b) a naive loop: every mutant predicted as its own batch of one through a jitted apply
      (3L calls per sequence), timed on --naive-sequences sequences only.
  (c) PyTorch: the reference model (`benchmarks.torch_models`) on the first
      --torch-sequences sequences, the 3L mutants of 8 sequences built with one scatter and
      predicted in batched forward passes (--torch-rows) under torch.inference_mode.

and integrated gradients (`interpret.integrated_gradients`, uniform baseline, --ig-steps).
Every method is warmed up (compiled) before timing. The work is split into --rounds rounds
and every method runs its share in each round (the interleaving of `benchmarks.timing`: a
shared machine's drift slows them alike). Reports sequences per second (total sequences /
total timed seconds), the compile seconds, and the largest difference between the methods'
ISM values. Writes benchmarks/results/interpret.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine_facts, machine_line, writable, write_report
from experiments._cli import positive_int
from molml_jax.process import prepare_process

RESULTS = Path(__file__).resolve().parent / "results"
ISM_BATCH = 8  # sequences per batch, for molml_jax and PyTorch alike
# mutants per PyTorch forward pass: the fastest of 128-1024 (DNA) and 32-256 (CNN) on 2 idle CPU cores
TORCH_ROWS = {"dna": 1024, "cnn": 128}


# ----- the models, as JAX functions and PyTorch functions of the same weights ---------------------

def build_models(name: str, length: int, seed: int) -> dict:
    """{'title', 'f' (JAX (B, L, 4) -> (B,)), 'apply' (f jitted), 'torch_f' ((B, L, 4) tensor ->
    (B,))} of the DNA BiLSTM ('dna') or the TF CNN ('cnn') at the pipelines' default sizes,
    from torch's initial weights (seed) ported to JAX."""
    import jax
    import torch

    from benchmarks import torch_models
    from molml_jax import interop, models

    torch.manual_seed(seed)
    if name == "dna":
        from molml_jax.pipelines.dna import Config

        hidden = Config().hidden_dim
        reference = torch_models.LSTMseq(hidden).eval()
        model = models.BiLSTMClassifier(hidden_dim=hidden)
        variables = {"params": interop.lstm_params_from_torch(reference.state_dict())}
        f = lambda x: model.apply(variables, x, train=False)  # noqa: E731  the logit

        def torch_f(x):
            _, (h_n, _) = reference.lstm(x)
            return reference.mlp(h_n[-1])[:, 0]  # the logit (LSTMseq's forward adds a sigmoid)

        title = f"DNA BiLSTM (hidden {hidden})"
    else:
        from molml_jax.pipelines.tf_binding import Config

        c = Config(window_length=length)
        sizes = dict(num_channels=c.num_channels, num_blocks=c.num_blocks, kernel_size=c.kernel_size,
                     dropout_rate=c.dropout_rate)
        reference = torch_models.BindingPredictorCNN(**sizes, length=length).eval()
        model = models.BindingPredictorCNN(**sizes, length=length)
        variables = {"params": interop.cnn_params_from_torch(reference.state_dict())}
        f = lambda x: model.apply(variables, x, train=False).sum(-1)  # noqa: E731  summed scores
        torch_f = lambda x: reference(x.transpose(1, 2)).sum(-1)  # noqa: E731  channels-first
        title = f"TF CNN ({c.num_channels} channels, {c.num_blocks} blocks)"
    return {"title": title, "f": f, "apply": jax.jit(f), "torch_f": torch_f}


def random_sequences(n: int, length: int, seed: int) -> np.ndarray:
    """(n, L, 4) float32 one-hot, uniform random bases."""
    return np.eye(4, dtype=np.float32)[np.random.default_rng(seed).integers(0, 4, (n, length))]


# ----- the three ISMs and integrated gradients ------------------------------------------------------

def ours_ism(models: dict, x: np.ndarray) -> np.ndarray:
    from molml_jax.interpret import in_silico_mutagenesis

    return in_silico_mutagenesis(models["f"], x, batch_size=ISM_BATCH)


def ours_ig(models: dict, x: np.ndarray, steps: int) -> np.ndarray:
    from molml_jax.interpret import integrated_gradients

    return integrated_gradients(models["f"], x, steps=steps)[1]


def naive_ism(models: dict, x: np.ndarray) -> np.ndarray:
    """The plain loop: each of the 3L mutants of a sequence predicted as its own batch."""
    apply, eye = models["apply"], np.eye(4, dtype=np.float32)
    out = np.zeros_like(x)
    for i in range(len(x)):
        before = float(apply(x[i:i + 1])[0])
        for p in range(x.shape[1]):
            for b in range(4):
                if x[i, p, b] != 1:
                    mutant = x[i:i + 1].copy()
                    mutant[0, p] = eye[b]
                    out[i, p, b] = float(apply(mutant)[0]) - before
    return out


def torch_ism(models: dict, x: np.ndarray, rows: int) -> np.ndarray:
    """PyTorch ISM of one-hot x (N, L, 4): per batch of ISM_BATCH sequences, the 3L mutants
    built with one scatter and predicted in forward passes of `rows` -> (N, L, 4)."""
    import torch

    fn, out = models["torch_f"], [np.zeros((0, *x.shape[1:]), np.float32)]
    with torch.inference_mode():
        for start in range(0, len(x), ISM_BATCH):
            batch = torch.from_numpy(x[start:start + ISM_BATCH])
            n, length, _ = batch.shape
            reference = batch.argmax(-1)  # (n, L)
            i = torch.arange(n).repeat_interleave(3 * length)
            p = torch.arange(length).repeat_interleave(3).repeat(n)
            k = torch.arange(1, 4).repeat(n * length)
            mutants = batch[i]
            mutants[torch.arange(len(i)), p] = torch.nn.functional.one_hot((reference[i, p] + k) % 4, 4).float()
            outputs = torch.cat([fn(mutants[s:s + rows]) for s in range(0, len(mutants), rows)])
            deltas = outputs.reshape(n, length, 3) - fn(batch)[:, None, None]
            deltas = torch.cat([torch.zeros(n, length, 1), deltas], -1)  # k = 0: the reference
            out.append(torch.gather(deltas, 2, (torch.arange(4) - reference[..., None]) % 4).numpy())
    return np.concatenate(out)


# ----- timing ---------------------------------------------------------------------------------------

def timed(fn, *args):
    """(fn(*args), seconds)."""
    began = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - began


def measure(name: str, args) -> dict:
    """Every method on one model: warm-up, then args.rounds interleaved rounds."""
    length = args.dna_length if name == "dna" else args.cnn_length
    models = build_models(name, length, args.seed)
    x = random_sequences(args.sequences, length, args.seed)
    warm = x[:ISM_BATCH]
    rows = args.torch_rows or TORCH_ROWS[name]
    compile_seconds = {"ism": timed(ours_ism, models, warm)[1],
                       "integrated_gradients": timed(ours_ig, models, x[:16], args.ig_steps)[1]}
    models["apply"](x[:1]).block_until_ready()  # compiles the batch-of-one apply
    timed(torch_ism, models, warm[:1], rows)
    parts = {"ours": np.array_split(np.arange(len(x)), args.rounds),
             "torch": np.array_split(np.arange(min(args.torch_sequences, len(x))), args.rounds),
             "naive": np.array_split(np.arange(min(args.naive_sequences, len(x))), args.rounds)}
    seconds = {"ism_ours": 0.0, "ism_naive": 0.0, "ism_torch": 0.0, "integrated_gradients": 0.0}
    results = {"ours": [], "naive": [], "torch": []}
    completeness = []
    for r in range(args.rounds):
        ours, s = timed(ours_ism, models, x[parts["ours"][r]])
        results["ours"].append(ours)
        seconds["ism_ours"] += s
        naive, s = timed(naive_ism, models, x[parts["naive"][r]])
        results["naive"].append(naive)
        seconds["ism_naive"] += s
        reference, s = timed(torch_ism, models, x[parts["torch"][r]], rows)
        results["torch"].append(reference)
        seconds["ism_torch"] += s
        complete, s = timed(ours_ig, models, x[parts["ours"][r]], args.ig_steps)
        completeness.append(complete)
        seconds["integrated_gradients"] += s
    ism = {k: np.concatenate(v) for k, v in results.items()}
    counts = {"ism_ours": len(x), "ism_naive": len(ism["naive"]), "ism_torch": len(ism["torch"]),
              "integrated_gradients": len(x)}
    return {
        "title": models["title"], "length": length, "sequences": counts, "seconds": seconds,
        "sequences_per_second": {k: counts[k] / seconds[k] if seconds[k] else None for k in seconds},
        "compile_seconds": compile_seconds, "torch_rows": rows,
        "max_abs_difference": {
            "ours_vs_naive": float(np.abs(ism["ours"][:len(ism["naive"])] - ism["naive"]).max(initial=0)),
            "ours_vs_torch": float(np.abs(ism["ours"][:len(ism["torch"])] - ism["torch"]).max(initial=0)),
        },
        "max_abs_ism": float(np.abs(ism["ours"]).max(initial=0)),
        "ig_completeness_quantiles": dict(zip(("median", "q90", "max"), map(
            float, np.quantile(np.concatenate(completeness), [0.5, 0.9, 1.0])))),
    }


def run(args) -> dict:
    import torch

    from benchmarks.timing import torch_num_threads
    from molml_jax.interpret.attributions import rows_per_pass

    load_before = os.getloadavg()
    with torch_num_threads(args.torch_threads):
        per_model = {name: measure(name, args) for name in ("dna", "cnn")}
        threads = torch.get_num_threads()
    return {
        "command": (f"python -m benchmarks.interpret --sequences {args.sequences} --dna-length {args.dna_length} "
                    f"--cnn-length {args.cnn_length} --naive-sequences {args.naive_sequences} --torch-sequences "
                    f"{args.torch_sequences} --ig-steps {args.ig_steps} --rounds {args.rounds} --seed {args.seed}"
                    + (f" --torch-rows {args.torch_rows}" if args.torch_rows else "")
                    + (f" --torch-threads {args.torch_threads}" if args.torch_threads else "")),
        "models": per_model, "ism_batch": ISM_BATCH, "ig_batch": 16, "ig_steps": args.ig_steps,
        "jax_rows_per_pass": {name: rows_per_pass(m["length"]) for name, m in per_model.items()},
        "torch_threads": threads, "rounds": args.rounds,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine": machine_facts(),
    }


def markdown(result: dict) -> str:
    d, c = result["models"]["dna"], result["models"]["cnn"]
    rate = lambda m, k: f"{m['sequences_per_second'][k]:.2f}" if m["sequences_per_second"][k] else "-"  # noqa: E731
    ratio = lambda m, a, b: (f"{m['sequences_per_second'][a] / m['sequences_per_second'][b]:.1f}x"  # noqa: E731
                             if m["sequences_per_second"][a] and m["sequences_per_second"][b] else "-")
    n = lambda m, k: m["sequences"][k]  # noqa: E731
    quantiles = lambda m: ", ".join(f"{v:.1e}" for v in m["ig_completeness_quantiles"].values())  # noqa: E731
    diff = lambda m, k: f"{m['max_abs_difference'][k]:.1e}"  # noqa: E731
    load = result["load_average_before_after"]
    lines = [
        "# Attributions: in-silico mutagenesis and integrated gradients, sequences per second", "",
        f"`{result['command']}`", "",
        f"| | {d['title']}, {d['length']} bp | {c['title']}, {c['length']} bp |", "|---|---|---|",
        f"| (a) ISM, molml_jax batched (batches of {result['ism_batch']}, passes of "
        f"{result['jax_rows_per_pass']['dna']} / {result['jax_rows_per_pass']['cnn']} mutants) | "
        f"**{rate(d, 'ism_ours')}** (n={n(d, 'ism_ours')}) | **{rate(c, 'ism_ours')}** (n={n(c, 'ism_ours')}) |",
        f"| (b) ISM, naive loop: one jitted call per mutant | {rate(d, 'ism_naive')} (n={n(d, 'ism_naive')}) | "
        f"{rate(c, 'ism_naive')} (n={n(c, 'ism_naive')}) |",
        f"| (c) ISM, PyTorch batched (passes of {d['torch_rows']} / {c['torch_rows']} mutants, "
        f"{result['torch_threads']} threads) | {rate(d, 'ism_torch')} (n={n(d, 'ism_torch')}) | "
        f"{rate(c, 'ism_torch')} (n={n(c, 'ism_torch')}) |",
        f"| (a) / (b) | {ratio(d, 'ism_ours', 'ism_naive')} | {ratio(c, 'ism_ours', 'ism_naive')} |",
        f"| (a) / (c) | {ratio(d, 'ism_ours', 'ism_torch')} | {ratio(c, 'ism_ours', 'ism_torch')} |",
        f"| integrated gradients, {result['ig_steps']} steps (batches of {result['ig_batch']}) | "
        f"**{rate(d, 'integrated_gradients')}** (n={n(d, 'integrated_gradients')}) | "
        f"**{rate(c, 'integrated_gradients')}** (n={n(c, 'integrated_gradients')}) |",
        f"| compile seconds: ISM, integrated gradients | {d['compile_seconds']['ism']:.1f}, "
        f"{d['compile_seconds']['integrated_gradients']:.1f} | {c['compile_seconds']['ism']:.1f}, "
        f"{c['compile_seconds']['integrated_gradients']:.1f} |",
        f"| integrated gradients' completeness error: median, 90%, max | {quantiles(d)} | {quantiles(c)} |",
        f"| largest ISM difference (a)-(b), (a)-(c); largest ISM value | {diff(d, 'ours_vs_naive')}, "
        f"{diff(d, 'ours_vs_torch')}; {d['max_abs_ism']:.2f} | {diff(c, 'ours_vs_naive')}, "
        f"{diff(c, 'ours_vs_torch')}; {c['max_abs_ism']:.2f} |",
        "",
        "Sequences per second = sequences / timed seconds, compilation and warm-up excluded. The naive loop "
        "(b) is timed on its few sequences only and PyTorch (c) on the first sequences of the same set "
        "(n: sequences timed); every method ran its share in each of "
        f"{result['rounds']} interleaved rounds. All three ISMs compute the same numbers from the same "
        "(ported) weights: the differences above are float32 rounding. Integrated gradients' completeness "
        "error is |sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)|: the midpoint rule's "
        "error falls as 1/steps^2 for the smooth LSTM but only as 1/steps for the ReLU CNN, whose 50 steps "
        "leave about 1% (use more steps where that matters).", "",
        f"1-minute load average {load[0]} before the run and {load[1]} at its end (on "
        f"{result['machine'].get('cpu_count')} CPUs; the benchmark itself keeps about 2 busy): this machine "
        "is shared with other work, which slows every method of a round alike.", "",
        machine_line(result["machine"]), "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interpret", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=positive_int, default=1000,
                        help="random sequences per model for (a) and integrated gradients (default 1000)")
    parser.add_argument("--dna-length", type=positive_int, default=101)
    parser.add_argument("--cnn-length", type=positive_int, default=300)
    parser.add_argument("--naive-sequences", type=positive_int, default=3, help="sequences timed for (b) (default 3)")
    parser.add_argument("--torch-sequences", type=positive_int, default=250,
                        help="sequences timed for (c), the first of the set (default 250)")
    parser.add_argument("--torch-rows", type=positive_int, default=None,
                        help=f"mutants per PyTorch forward pass (default: {TORCH_ROWS})")
    parser.add_argument("--torch-threads", type=positive_int, default=None, help="default: torch's own")
    parser.add_argument("--ig-steps", type=positive_int, default=50)
    parser.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="of the sequences and torch's initial weights")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    prepare_process(1)
    from molml_jax.errors import exit_on_user_error

    with exit_on_user_error():
        writable(args.results_dir)
        result = run(args)
    print(write_report(args.results_dir, "interpret", result, markdown))


if __name__ == "__main__":
    main()
