"""The README's "Interpreting models" example, on the bundled course data, through the
command line as a user runs it:

    python docs/interpretation/example.py            # writes docs/interpretation/*.png, *.tsv, *.md

1. train the DNA classifier (40 epochs, seed 0) into runs/dna_interpret;
2. the test sequence it scores highest -> top.fa; `attribute` with integrated gradients
   (logo) and with ism (logo and heat map);
3. a demo genome (the test sequences laid end to end as contig `chr1`) and a VCF of SNVs on
   the top sequence: its three most damaging substitutions by ISM, a neutral one, a REF that
   does not match the genome, an indel and an unknown contig (contig names without `chr`, as
   many VCFs write them) -> `variants` -> effects.tsv.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUN = REPO / "runs" / "dna_interpret"
WORK = REPO / "runs" / "dna_interpret_example"


def cli(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "experiments.dna", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    print(proc.stdout, end="")
    return proc.stdout


def main() -> None:
    from molml_jax.pipelines import dna

    if not (RUN / "summary.json").is_file():
        cli("train", "--epochs", 40, "--seed", 0, "--out", RUN, "--quiet")
    WORK.mkdir(parents=True, exist_ok=True)
    data = dna.load_data(dna.Config(seed=0))
    test = data.split["test"]
    x = np.asarray(data.x[test])
    sequences = ["".join("ACGT"[b] if row[j].any() else "N" for j, b in enumerate(row.argmax(-1))) for row in x]
    probability = dna.predict_arrays(RUN, x)
    top = int(np.argmax(probability))
    name = f"test_{int(test[top])}"
    (WORK / "top.fa").write_text(f">{name}\n{sequences[top]}\n")
    cli("attribute", "--checkpoint", RUN, "--input", WORK / "top.fa", "--method", "integrated-gradients",
        "--output", WORK / "ig.npz", "--plot", 1)
    cli("attribute", "--checkpoint", RUN, "--input", WORK / "top.fa", "--method", "ism",
        "--output", WORK / "ism.npz", "--plot", 1)

    genome = "".join(sequences)
    (WORK / "genome.fa").write_text(">chr1\n" + "\n".join(genome[i:i + 60] for i in range(0, len(genome), 60)) + "\n")
    with np.load(WORK / "ism.npz") as saved:
        ism = saved["attributions"][0]
    offset = top * len(sequences[top])  # 0-based start of the top sequence on chr1
    order = np.argsort(ism, axis=None)  # most negative change first
    rows = []
    for flat in order[:3]:
        position, base = divmod(int(flat), 4)
        rows.append((position, "ACGT"[base], f"damaging_{len(rows) + 1}"))
    position, base = divmod(int(np.argmin(np.abs(np.where(ism == 0, np.inf, ism)))), 4)
    rows.append((position, "ACGT"[base], "neutral"))
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for position, alt, label in rows:
        lines.append(f"1\t{offset + position + 1}\t{label}\t{genome[offset + position]}\t{alt}\t.\t.\t.")
    wrong = next(b for b in "ACGT" if b != genome[offset + 10])
    alt = next(b for b in "ACGT" if b not in (wrong, genome[offset + 10]))
    lines.append(f"1\t{offset + 11}\twrong_ref\t{wrong}\t{alt}\t.\t.\t.")
    lines.append(f"1\t{offset + 20}\tdeletion\t{genome[offset + 19:offset + 21]}\t{genome[offset + 19]}\t.\t.\t.")
    lines.append("7\t1000\tother_contig\tA\tG\t.\t.\t.")
    (WORK / "snvs.vcf").write_text("\n".join(lines) + "\n")
    cli("variants", "--checkpoint", RUN, "--variants", WORK / "snvs.vcf", "--reference", WORK / "genome.fa",
        "--output", WORK / "effects.tsv", "--rc-average")

    shutil.copy(WORK / "ig_logo_0.png", HERE / "ig_logo.png")
    shutil.copy(WORK / "ism_ism_0.png", HERE / "ism_heatmap.png")
    shutil.copy(WORK / "effects.tsv", HERE / "effects.tsv")
    import pandas as pd

    table = pd.read_csv(WORK / "effects.tsv", sep="\t", keep_default_na=False, dtype=str)
    for column in ("ref_score", "alt_score", "delta"):
        table[column] = [f"{float(v):.3f}" if v else "" for v in table[column]]
    with open(HERE / "effects.md", "w") as handle:
        handle.write(f"Top-scoring test sequence: {name}, probability {probability[top]:.3f}.\n\n")
        handle.write("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n")
        for row in table.itertuples(index=False):
            handle.write("| " + " | ".join(map(str, row)) + " |\n")
    print((HERE / "effects.md").read_text())


if __name__ == "__main__":
    main()
