"""Variant scoring: SNVs per second with a real model, and peak memory at two VCF sizes.

    python -m benchmarks.variants                                # 10,000 and 100,000 SNVs
    python -m benchmarks.variants --sizes 1000,10000 --contig-length 1000000 --out /tmp/variants

Writes a synthetic genome once (2 contigs of `--contig-length` random bases, FASTA with
60-base lines, named chr1 and chr2, indexed before timing) and one VCF per size: random
SNV positions sorted by contig and position (contigs named 1 and 2, so the 'chr' prefix
matching is on the path), REF from the genome except for 0.1% deliberate mismatches, ALT a
random other base. Then, in a fresh process per size, `score_variants` scores every SNV
with the DNA BiLSTM at its default size (`BiLSTMClassifier(hidden_dim=Config().hidden_dim)`,
random initialisation; the weights do not change the cost) on 101 bp windows, jitted and
called on a fixed batch of 2 x `--batch-size` windows (REF and ALT together; the last
batch of each chunk zero-padded), so it compiles once, before the timing starts.

Reported per size: SNVs per second over the whole call (reading the VCF, fetching the
windows, one-hot, the model, writing the TSV), the seconds spent in the model, and the
process's peak resident memory from the kernel (wait4's ru_maxrss: JAX included). Goal
(issue "genomic input"): peak memory at the largest size within 1.2x of the smallest,
since reading and writing stream chunk by chunk.
Writes benchmarks/results/variants.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine_facts, machine_line, writable, write_report
from experiments._cli import positive_int

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY_GOAL = 1.2    # peak RSS, largest / smallest size
LENGTH = 101         # the DNA BiLSTM's window (the course's sequences)
MISMATCH = 0.001     # fraction of SNVs whose REF is not the genome's base
LINE = 60            # FASTA line width
_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def sizes(text: str) -> list[int]:
    values = sorted({positive_int(part) for part in text.split(",") if part.strip()})
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"give at least two sizes, e.g. 10000,100000: {text!r}")
    return values


def write_genome(path: Path, contigs: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """`contigs` random contigs chr1, chr2, ... of `length` bases as FASTA (60 a line);
    returns each contig's bases as uint8 ASCII codes."""
    rng = np.random.default_rng(seed)
    sequences = [_BASES[rng.integers(0, 4, size=length)] for _ in range(contigs)]
    with open(path, "wb") as handle:
        for k, seq in enumerate(sequences, start=1):
            handle.write(f">chr{k}\n".encode())
            for start in range(0, length, LINE * 10_000):  # 10,000 lines at a time
                block = seq[start:start + LINE * 10_000]
                handle.write(b"\n".join(block[i:i + LINE].tobytes() for i in range(0, len(block), LINE)) + b"\n")
    return sequences


def write_snvs(path: Path, sequences: list[np.ndarray], n: int, seed: int) -> int:
    """A VCF of `n` random SNVs on contigs 1, 2, ... (sorted); returns how many have a
    deliberately wrong REF."""
    rng = np.random.default_rng(seed)
    contig = np.sort(rng.integers(0, len(sequences), size=n))
    rows, mismatches = [], 0
    for k, seq in enumerate(sequences):
        count = int((contig == k).sum())
        positions = np.sort(rng.integers(0, len(seq), size=count))
        ref = seq[positions]
        wrong = rng.random(count) < MISMATCH
        code = np.searchsorted(_BASES, ref)
        ref_written = np.where(wrong, _BASES[(code + 1) % 4], ref)
        alt = _BASES[(code + rng.integers(1, 4, size=count)) % 4]  # never the genome's base
        alt = np.where(alt == ref_written, _BASES[(np.searchsorted(_BASES, alt) + 1) % 4], alt)
        mismatches += int(wrong.sum())
        rows += [f"{k + 1}\t{p + 1}\tsnv{k + 1}_{p + 1}\t{chr(r)}\t{chr(a)}\t.\tPASS\t."
                 for p, r, a in zip(positions.tolist(), ref_written.tolist(), alt.tolist())]
    header = ["##fileformat=VCFv4.2"] + [f"##contig=<ID={k + 1},length={len(s)}>" for k, s in enumerate(sequences)]
    header.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO")
    path.write_text("\n".join(header + rows) + "\n")
    return mismatches


def measure(vcf: Path, genome: Path, output: Path, batch_size: int) -> dict:
    """In this process: score every SNV of `vcf` with the BiLSTM; the timings."""
    import jax
    import jax.numpy as jnp

    from molml_jax.interpret.variants import score_variants
    from molml_jax.models.lstm import BiLSTMClassifier
    from molml_jax.pipelines.dna import Config

    model = BiLSTMClassifier(hidden_dim=Config().hidden_dim)
    windows = 2 * batch_size
    variables = model.init(jax.random.key(0), jnp.zeros((windows, LENGTH, 4), jnp.float32))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    in_model = [0.0, 0]

    def score(x: np.ndarray) -> np.ndarray:
        """(B, 101, 4) -> logits (B,), B <= windows, on one compiled shape."""
        began = time.perf_counter()
        n = len(x)
        if n < windows:
            x = np.concatenate([x, np.zeros((windows - n, LENGTH, 4), np.float32)])
        logits = np.asarray(apply(variables, x))[:n]
        in_model[0] += time.perf_counter() - began
        in_model[1] += 1
        return logits

    began = time.perf_counter()
    score(np.zeros((windows, LENGTH, 4), np.float32))
    compile_seconds = time.perf_counter() - began
    in_model[:] = [0.0, 0]
    began = time.perf_counter()
    summary = score_variants(vcf, genome, score, LENGTH, output, batch_size=batch_size)
    seconds = time.perf_counter() - began
    return {"variants": summary["rows"], "status": summary["status"], "chr_prefix_matched": summary["chr_prefix_matched"],
            "seconds": seconds, "variants_per_second": summary["rows"] / seconds, "model_seconds": in_model[0],
            "model_calls": in_model[1], "compile_seconds": compile_seconds}


def measured(argv: list[str]) -> tuple[int, dict]:
    """(peak RSS bytes from wait4's ru_maxrss, the JSON it printed last) of `python ARGV`."""
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.stdout.read(), process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code:
        raise SystemExit(f"error: {' '.join(argv[:4])} ... failed ({code}): {stderr.strip()[-800:]}")
    return usage.ru_maxrss * 1024, json.loads(stdout.strip().splitlines()[-1])  # ru_maxrss is in KiB on Linux


def markdown(result: dict) -> str:
    lines = [f"# Variant scoring: DNA BiLSTM (hidden {result['hidden_dim']}, random init) on {LENGTH} bp windows",
             "", f"Synthetic genome: {result['contigs']} contigs x {result['contig_length']:,} bases; "
             f"REF and ALT windows scored together in batches of {2 * result['batch_size']} windows.", "",
             "| SNVs | SNVs / s | seconds | of which model | ok | ref_mismatch | peak RSS GiB |",
             "|---|---|---|---|---|---|---|"]
    for size in result["sizes"]:
        run = result["runs"][str(size)]
        lines.append(f"| {size:,} | {run['variants_per_second']:,.0f} | {run['seconds']:.1f} | {run['model_seconds']:.1f} "
                     f"| {run['status']['ok']:,} | {run['status']['ref_mismatch']:,} | {run['peak_rss_bytes'] / 2**30:.2f} |")
    lines += ["", f"- Peak memory, {result['sizes'][-1]:,} / {result['sizes'][0]:,} SNVs: "
              f"**{result['memory_ratio']:.2f}x** (goal <= {MEMORY_GOAL}x: the VCF is read and the TSV written "
              f"chunk by chunk).",
              "- SNVs per second count the whole `score_variants` call (VCF, FASTA windows through the .fai "
              "index, one-hot, model, TSV); 'of which model' is the time inside the jitted model.",
              "- Peak RSS is the whole process (wait4 ru_maxrss), JAX and the compiled model included.", "",
              machine_line(result["machine"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.variants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=sizes, default=[10_000, 100_000], help="SNVs per VCF (default: 10000,100000)")
    parser.add_argument("--contig-length", type=positive_int, default=5_000_000, help="bases per contig (default: 5000000)")
    parser.add_argument("--contigs", type=positive_int, default=2, help="contigs (default: 2)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="SNVs per model call (default: 256)")
    parser.add_argument("--work", type=Path, default=None, help="where the genome and VCFs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument("--measure", nargs=3, type=Path, metavar=("VCF", "FASTA", "TSV"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child process: one size, timings as JSON on stdout
        print(json.dumps(measure(*args.measure, args.batch_size)))
        return
    out = writable(args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="molml_variants_"))
    work.mkdir(parents=True, exist_ok=True)
    genome = work / "genome.fa"
    began = time.perf_counter()
    sequences = write_genome(genome, args.contigs, args.contig_length)
    from molml_jax.interpret.genome import Genome

    Genome(genome).close()  # builds the .fai before any timing
    print(f"genome {args.contigs} x {args.contig_length:,} bases in {time.perf_counter() - began:.0f} s: {genome}",
          file=sys.stderr)
    runs = {}
    for size in args.sizes:
        vcf = work / f"snvs_{size}.vcf"
        mismatches = write_snvs(vcf, sequences, size, seed=size)
        rss, run = measured(["-m", "benchmarks.variants", "--batch-size", str(args.batch_size),
                             "--measure", str(vcf), str(genome), str(work / f"scores_{size}.tsv")])
        run.update(peak_rss_bytes=rss, mismatches_written=mismatches)
        runs[str(size)] = run
        print(f"{size}: {run['variants_per_second']:,.0f} SNVs/s ({run['model_seconds']:.1f} of {run['seconds']:.1f} s "
              f"in the model), peak RSS {rss / 2**30:.2f} GiB, {run['status']}", file=sys.stderr)
    from molml_jax.pipelines.dna import Config

    result = {"sizes": args.sizes, "contigs": args.contigs, "contig_length": args.contig_length,
              "batch_size": args.batch_size, "length": LENGTH, "hidden_dim": Config().hidden_dim, "runs": runs,
              "memory_ratio": runs[str(args.sizes[-1])]["peak_rss_bytes"] / runs[str(args.sizes[0])]["peak_rss_bytes"],
              "machine": machine_facts()}
    print(write_report(out, "variants", result, markdown))


if __name__ == "__main__":
    main()
