"""A reference genome for scoring: windows of a FASTA fetched by position, through pyfaidx.

Conventions, for every module in `molml_jax.interpret`:

- Positions are 0-based here (`center0`, `start`); variant files give 1-based POS and
  their readers subtract one.
- A window of `length` bases centered on `center0` covers [center0 - length // 2,
  center0 - length // 2 + length): for odd lengths the center has (length - 1) / 2 bases
  on each side; for even lengths it is the right one of the two middle bases (length / 2
  bases before it, length / 2 - 1 after). In the window string the center is index
  `length // 2`. `window_start` is the one place this rule is written.
- A window that would run past either end of its contig is not made (`None`, status
  `near_contig_end`) rather than padded with N: the models were trained on windows of real
  sequence only, so a score of an N-padded window is outside what they have seen.
- Contig names that differ only by a `chr` prefix match ("1" finds "chr1", "chrX" finds
  "X"); an exact name always wins. `Genome.renamed` records every name matched that way so
  the caller can say so once.
"""

from __future__ import annotations

import os
from pathlib import Path

from molml_jax.errors import InputError, require
from molml_jax.interpret._io import check_file, first_line

PREFIX = "chr"


def window_start(center0: int, length: int) -> int:
    """The 0-based first base of the `length`-bp window whose center base is `center0`."""
    return center0 - length // 2


def _open_faidx(path: Path):
    """pyfaidx.Faidx of `path` (building a missing .fai, and .gzi for bgzip), every failure
    one InputError naming the file."""
    pyfaidx = require("pyfaidx", "genomics", f"{path}: reading a reference FASTA")

    compressed = path.name.lower().endswith((".gz", ".bgz"))
    try:
        return pyfaidx.Faidx(str(path), as_raw=True, sequence_always_upper=True)
    except ImportError:
        raise InputError(f"{path}: reading a bgzip-compressed FASTA needs Biopython >= 1.73 "
                         f"(pip install biopython), or decompress it") from None
    except pyfaidx.UnsupportedCompressionFormat:
        raise InputError(f"{path}: a compressed FASTA must be bgzip-compressed (samtools' bgzip), "
                         f"not gzip: run 'gunzip' then 'bgzip' on it, or use it uncompressed") from None
    except pyfaidx.FastaIndexingError as err:
        raise InputError(f"{path}: cannot index this FASTA ({first_line(err)})") from None
    except OSError as err:
        if "writable" not in str(err):
            raise InputError(f"{path}: not a readable FASTA ({first_line(err)})") from None
        raise InputError(f"{path}: cannot write its index {path}.fai{'/.gzi' if compressed else ''} "
                         f"(read-only folder?): make it with 'samtools faidx' where the FASTA is, "
                         f"or copy the FASTA to a writable folder") from None
    except (ValueError, UnicodeDecodeError) as err:  # duplicate names, binary data
        raise InputError(f"{path}: not a usable FASTA ({first_line(err)})") from None


class Genome:
    """A reference FASTA (plain, or bgzip .gz with its .fai/.gzi) opened for random access.

    Windows are read by seeking into the file through its .fai index (pyfaidx), never by
    loading a contig: memory does not grow with the genome. Sequences come back uppercase
    (soft-masked repeats are ordinary bases to a model). Use as a context manager, or
    call `close`.

    A missing or stale index (.fai, and .gzi for bgzip) is built beside the FASTA, so its
    folder must be writable the first time. A bgzip FASTA is read with Biopython's BGZF
    reader (pyfaidx's way; Biopython is not a dependency: the error says to install it).

    Attributes:
      path: the FASTA.
      names: its sequence names in file order (the first word of each '>' line).
      lengths: {name: bases}.
      renamed: {asked name: FASTA name} for every name that `resolve` matched through the
        `chr` prefix rule; empty when none was.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        check_file(self.path, "reference FASTA")
        self._faidx = _open_faidx(self.path)
        self.lengths = {name: int(record.rlen) for name, record in self._faidx.index.items()}
        self.names = list(self.lengths)
        self.renamed: dict[str, str] = {}
        self._resolved: dict[str, str | None] = {}

    def __enter__(self) -> "Genome":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._faidx.close()

    @property
    def prefix_matched(self) -> bool:
        """Whether any name was resolved through the `chr` prefix rule."""
        return bool(self.renamed)

    def resolve(self, name: str) -> str | None:
        """The FASTA's name for contig `name`: itself, else with a `chr` prefix added or
        removed ("1" -> "chr1", "chrX" -> "X"); None when neither is in the FASTA."""
        if name in self._resolved:
            return self._resolved[name]
        found: str | None = name if name in self.lengths else None
        if found is None:
            other = name[len(PREFIX):] if name.startswith(PREFIX) else PREFIX + name
            if other and other in self.lengths:
                found = other
                self.renamed[name] = other
        self._resolved[name] = found
        return found

    def _contig(self, name: str) -> str:
        contig = self.resolve(name)
        if contig is None:
            raise InputError(f"{self.path}: no sequence named '{name}' (with or without a 'chr' prefix)")
        return contig

    def fetch(self, contig: str, start: int, end: int) -> str:
        """Bases [start, end) (0-based, end-exclusive) of `contig`, uppercase; the range
        must lie inside the contig."""
        contig = self._contig(contig)
        if not 0 <= start <= end <= self.lengths[contig]:
            raise ValueError(f"{contig}:{start}-{end} is outside {contig} (0-{self.lengths[contig]})")
        if start == end:
            return ""
        return self._faidx.fetch(contig, start + 1, end)

    def window(self, contig: str, center0: int, length: int) -> str | None:
        """The `length`-bp window (str) whose center base is the 0-based `center0`: it
        starts at `window_start(center0, length)` = center0 - length // 2. None when it
        would run past either end of the contig (status `near_contig_end`)."""
        contig = self._contig(contig)
        start = window_start(center0, length)
        if start < 0 or start + length > self.lengths[contig]:
            return None
        return self.fetch(contig, start, start + length)
