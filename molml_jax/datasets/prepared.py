"""Prepared datasets: write a pipeline's split once as a TFDS ArrayRecord dataset, open it
again (checked), and read records by index without holding a split in memory.

DATA_DIR layout (one pipeline per DATA_DIR):
    DATA_DIR/molml_<pipeline>/1.0.0/
        dataset_info.json  features.json  metadata.json
        molml_<pipeline>-train.array_record-00000-of-00001   (and -validation, -test)

metadata.json: pipeline, format_version, settings (the Config's data fields and the seed
of the split), parts (examples per split), shapes (per feature), variable_length (dna),
origin (what load_data read), sources (SHA256 of every source file, or the simulation
settings), files (bytes of every data file, checked when opened).
"""

from __future__ import annotations

import dataclasses
import contextlib
import hashlib
import io
import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from molml_jax.datasets.builders import BUILDERS, DATASET_NAMES, PARTS, VERSION, Examples
from molml_jax.datasets.base import is_prepared
from molml_jax.errors import InputError

FORMAT_VERSION = 1
_CACHE_BYTES = 64 << 20  # the last read is kept (so columns of one record decode once) up to this size


# ----- writing ----------------------------------------------------------------------------

def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_checksums(path) -> dict[str, str]:
    """{name: SHA256} of a file, or of every file under a folder (relative POSIX names)."""
    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in files}


def data_settings(config) -> dict:
    """The settings that decide a prepared dataset: Config fields marked `data=True`, and the
    seed (of the split)."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("data")}
    settings["seed"] = config.seed
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def check_target(out, pipeline: str) -> None:
    """Before loading anything: refuse an `out` that is a file or holds another pipeline's
    (or another version's) prepared dataset."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not a folder for a prepared dataset")
    if is_prepared(out):
        open_prepared(out, pipeline)


def write_prepared(out, pipeline: str, columns: Mapping[str, object], split: Mapping[str, np.ndarray], *,
                   metadata: dict) -> "Prepared":
    """Write DATA_DIR `out` (molml_<pipeline>/1.0.0/...) from columns over N examples and the
    pipeline's split, each part's records in the split's order.

    columns: the builder's features (see builders.py), each indexable by an int array
      (e.g. dna: x (N, L, 4) 0/1, length (N,), label (N,), name (N,) object).
    split: {'train', 'val'[, 'test']} -> int index arrays into the columns.
    metadata: pipeline facts (settings, sources, origin, ...), stored in metadata.json.
    Preparing again into the same DATA_DIR: with the same settings and sources nothing is
    written (the dataset is reused); anything else is refused, nothing is overwritten.
    Returns the opened dataset.
    """
    import tensorflow_datasets as tfds

    out = Path(out)
    check_target(out, pipeline)
    builder_class = BUILDERS[pipeline]
    record = {"pipeline": pipeline, "format_version": FORMAT_VERSION, **metadata,
              "parts": {part: int(len(split[part])) for part in PARTS if part in split},
              "shapes": {k: list(np.shape(columns[k])[1:]) for k in builder_class.DTYPES if k != "name"}}
    record = json.loads(json.dumps(record))  # plain JSON values, as they read back
    if is_prepared(out):
        existing = open_prepared(out, pipeline)  # another pipeline's, or another version: refused here
        same = ("settings", "sources", "parts", "shapes")
        if all(existing.metadata.get(k) == record.get(k) for k in same):
            existing.reused = True
            return existing
        changed = [k for k in same if existing.metadata.get(k) != record.get(k)]
        raise InputError(f"{out}: holds a prepared {pipeline} dataset with other {', '.join(changed)}; "
                         f"use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    tfds.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="molml_prepare_") as downloads:
        builder = builder_class(data_dir=str(out), file_format="array_record",
                                examples=Examples(columns, split))
        builder.info.metadata.update(record)
        with contextlib.redirect_stdout(io.StringIO()):  # tfds prints two lines of its own
            builder.download_and_prepare(download_dir=downloads)
        version_dir = Path(builder.data_dir)
        builder.info.metadata["files"] = {p.name: p.stat().st_size for p in sorted(version_dir.glob("*.array_record-*"))}
        builder.info.write_to_directory(str(version_dir))
    shutil.rmtree(out / "downloads", ignore_errors=True)  # tfds makes it even when unused
    return open_prepared(out, pipeline)


def open_for_config(config, pipeline: str) -> "Prepared":
    """The prepared dataset a Config's `data` names; other data settings (Config fields
    marked data=True) given with it, i.e. not at their defaults, are refused in one line:
    the dataset fixes the data and the split."""
    given = [f.name for f in dataclasses.fields(config)
             if f.metadata.get("data") and f.name != "data" and getattr(config, f.name) != f.default]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise InputError(f"{config.data}: is a prepared {pipeline} dataset (its data and split are fixed); "
                         f"{flags} cannot be given with it")
    return open_prepared(config.data, pipeline)


# ----- finding and opening ----------------------------------------------------------------

def _pipeline_of(name: str) -> str | None:
    return next((p for p, n in DATASET_NAMES.items() if n == name), None)


def open_prepared(path, pipeline: str) -> "Prepared":
    """The prepared `pipeline` dataset at `path` (DATA_DIR or its version folder), checked:
    an InputError naming the path for anything else (not a dataset, another pipeline's,
    another version, missing or truncated data files)."""
    path = Path(path)
    name = DATASET_NAMES[pipeline]
    if path.is_dir() and not (path / "dataset_info.json").is_file():
        others = sorted(p.name for p in path.glob("molml_*") if p.is_dir())
        if others and name not in others:
            theirs = _pipeline_of(others[0]) or others[0]
            raise InputError(f"{path}: is a prepared {theirs} dataset, not {pipeline}")
        if name in others:
            versions = sorted(p.name for p in (path / name).iterdir() if (p / "dataset_info.json").is_file())
            if versions and VERSION not in versions:
                raise InputError(f"{path}: holds {name} version {', '.join(versions)}; this molml-jax reads {VERSION}")
            path = path / name / VERSION
    if not (path / "dataset_info.json").is_file():
        raise InputError(f"{path}: not a prepared dataset (no dataset_info.json; write one with "
                         f"`python -m experiments.{pipeline} prepare --out DIR`)")
    try:
        info = json.loads((path / "dataset_info.json").read_text())
        metadata = json.loads((path / "metadata.json").read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable dataset_info.json or metadata.json ({err})") from None
    if info.get("name") != name:
        theirs = _pipeline_of(info.get("name", "")) or repr(info.get("name"))
        raise InputError(f"{path}: is a prepared {theirs} dataset, not {pipeline}")
    if info.get("version") != VERSION or metadata.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: {name} version {info.get('version')} (format {metadata.get('format_version')}); "
                         f"this molml-jax reads {VERSION} (format {FORMAT_VERSION})")
    _check_files(path, info, metadata)
    return Prepared(path, pipeline, metadata)


def _check_files(path: Path, info: dict, metadata: dict) -> None:
    """Cheap checks at open: every data file present with its written size and record count,
    its first and last records readable (damage elsewhere is found when read)."""
    from array_record.python.array_record_module import ArrayRecordReader

    for name, size in metadata.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise InputError(f"{file}: data file missing")
        if file.stat().st_size != size:
            raise InputError(f"{file}: {file.stat().st_size} bytes, {size} written: truncated or replaced")
    for split in info.get("splits", []):
        expected = [int(n) for n in split.get("shardLengths", [])]
        for shard, n in enumerate(expected):
            file = path / f"{info['name']}-{split['name']}.array_record-{shard:05d}-of-{len(expected):05d}"
            try:
                reader = ArrayRecordReader(str(file), "readahead_buffer_size:0")
                count = reader.num_records()
                if count == n and n:
                    reader.read([0, n - 1])  # the first and last chunks' checksums
                reader.close()
            except (OSError, RuntimeError, ValueError) as err:
                raise InputError(f"{file}: corrupt or not an array_record file ({_first_line(err)})") from None
            if count != n:
                raise InputError(f"{file}: {count} records, {n} written: truncated or corrupt")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


# ----- reading ----------------------------------------------------------------------------

class Prepared:
    """An opened prepared dataset.

    path: its version folder; pipeline; metadata (metadata.json); parts: {'train': n,
    'val': n[, 'test': n]}. source(part): the TFDS random-access data source;
    read(part, indices): decoded records stacked; column(key, convert): a LazyColumn over
    the parts concatenated in order train, val, test.
    """

    def __init__(self, path: Path, pipeline: str, metadata: dict):
        self.path = Path(path)
        self.pipeline = pipeline
        self.metadata = metadata
        self.parts = {part: int(metadata["parts"][part]) for part in PARTS if part in metadata["parts"]}
        self._sources: dict = {}
        self._builder = None
        self._last: tuple | None = None  # (part, index bytes, records)
        self.reused = False  # write_prepared found it already written with the same settings

    @property
    def version(self) -> str:
        return VERSION

    def __repr__(self) -> str:
        return f"Prepared({self.pipeline!r}, {str(self.path)!r}, parts={self.parts})"

    def source(self, part: str):
        """The TFDS ArrayRecord data source of a part ('train', 'val', 'test')."""
        if part not in self.parts:
            raise InputError(f"{self.path}: no {part} split (has {', '.join(self.parts)})")
        if part not in self._sources:
            import tensorflow_datasets as tfds

            if self._builder is None:
                self._builder = tfds.builder_from_directory(str(self.path))
            self._sources[part] = self._builder.as_data_source(split=PARTS[part])
        return self._sources[part]

    def read(self, part: str, indices) -> dict[str, np.ndarray]:
        """Records `indices` (int array, in this order) of a part, decoded and stacked:
        {feature: (len(indices), ...)}; names as an object array of str."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        key = (part, indices.tobytes())
        if self._last is not None and self._last[:2] == key:
            return self._last[2]
        n = self.parts.get(part, 0)
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"{self.path}: {part} has {n} records; index out of range")
        indices = np.where(indices < 0, indices + n, indices)
        source = self.source(part)
        try:
            # the raw records, decoded here (the TFDS data source's own decoding, record by
            # record through its feature objects, made streamed epochs ~1.5x slower on 2 cores)
            raw = source.data_source.__getitems__(indices.tolist()) if indices.size else []
            stacked = _decode(raw, self.pipeline, self.metadata.get("shapes", {}))
        except Exception as err:  # the array_record / decoder error of a damaged file
            raise InputError(f"{self.path}: cannot read the {part} records ({_first_line(err)}): "
                             f"corrupt data file") from None
        if sum(v.nbytes for v in stacked.values()) <= _CACHE_BYTES:
            self._last = (*key, stacked)
        return stacked

    def column(self, key: str, convert: Callable[[np.ndarray], np.ndarray] | None = None) -> "LazyColumn":
        """The feature `key` over train, val, test concatenated, read on indexing."""
        return LazyColumn(self, key, convert)

    @property
    def split_seed(self) -> int:
        return int(self.metadata["settings"]["seed"])

    def provenance(self) -> str:
        """e.g. 'prepared dna dataset 1.0.0 at DIR (split seed 0; from CSV dna_binding.csv)'."""
        return (f"prepared {self.pipeline} dataset {VERSION} at {self.path} "
                f"(split seed {self.split_seed}; from {self.metadata.get('origin', '?')})")

    def split(self) -> dict[str, np.ndarray]:
        """The pipeline's split over the concatenated parts: consecutive index ranges."""
        starts = self.offsets()
        return {part: np.arange(starts[part], starts[part] + n) for part, n in self.parts.items()}

    def offsets(self) -> dict[str, int]:
        """Where each part starts in the concatenated order train, val, test."""
        starts, at = {}, 0
        for part, n in self.parts.items():
            starts[part] = at
            at += n
        return starts

    def verify(self) -> None:
        """Read and decode every record once (open_prepared only checks sizes and record
        counts): an InputError for a damaged file."""
        for part, n in self.parts.items():
            for start in range(0, n, 4096):
                self.read(part, np.arange(start, min(n, start + 4096)))


def _decode(raw: list[bytes], pipeline: str, shapes: dict) -> dict[str, np.ndarray]:
    """Serialized records (tf.train.Example protos, as the builders wrote them) -> the
    features stacked: {feature: (len(raw), *shape)} in the builder's DTYPES; names an object
    array of str. The item shapes come from metadata.json."""
    from tensorflow_datasets.proto import tf_example_pb2

    builder = BUILDERS[pipeline]
    records = [tf_example_pb2.Example.FromString(r).features.feature for r in raw]
    out = {}
    for key, dtype in builder.DTYPES.items():
        stored = builder.STORED[key]
        if stored == "text":
            out[key] = np.array([r[key].bytes_list.value[0].decode() for r in records], dtype=object)
        elif stored == "int":
            out[key] = np.array([r[key].int64_list.value[0] for r in records], dtype=dtype).reshape(len(records))
        else:
            # a tensor of more than one unknown dimension is stored as KEY/value + KEY/shape
            field = key if not records or key in records[0] else f"{key}/value"
            unpack = zlib.decompress if stored == "zlib" else bytes
            values = bytearray()  # writable, as the pipelines' own arrays
            for r in records:
                values += unpack(r[field].bytes_list.value[0])
            out[key] = np.frombuffer(values, dtype=dtype).reshape(len(records), *shapes.get(key, []))
    return out


class LazyColumn:
    """One feature over the parts train, val, test concatenated (global index = offset of
    the part + index in the part), read from the records on indexing.

    col[int_array] / col[slice] -> numpy (N_sel, ...); col[int] -> one item (str for names);
    len(col), .shape, .dtype. `convert` maps the stored values (e.g. uint8 one-hot) to
    what the pipeline's in-memory arrays hold (float32)."""

    def __init__(self, prepared: Prepared, key: str, convert: Callable[[np.ndarray], np.ndarray] | None = None):
        self.prepared, self.key = prepared, key
        self._convert = convert or (lambda values: values)
        self._n = sum(prepared.parts.values())
        item_shape = tuple(prepared.metadata.get("shapes", {}).get(key, []))
        self.shape = (self._n, *item_shape)
        stored = BUILDERS[prepared.pipeline].DTYPES[key]
        self.dtype = np.dtype(object) if stored is str else self._convert(np.zeros((0, *item_shape), stored)).dtype

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"LazyColumn({self.key!r}, shape={self.shape}, dtype={self.dtype}, {self.prepared.path})"

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self._n if index < 0 else 0)
            if not 0 <= i < self._n:
                raise IndexError(f"index {index} out of range for {self._n} records")
            return self[np.array([i])][0]
        if isinstance(index, slice):
            index = np.arange(self._n)[index]
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + self._n, index).astype(np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self._n):
            raise IndexError(f"index out of range for {self._n} records")
        starts = self.prepared.offsets()
        result = None
        for part, n in self.prepared.parts.items():
            inside = (index >= starts[part]) & (index < starts[part] + n)
            if not inside.any():
                continue
            values = self._convert(self.prepared.read(part, index[inside] - starts[part])[self.key])
            if inside.all():
                return values
            if result is None:
                result = np.empty((len(index), *values.shape[1:]), values.dtype)
            result[inside] = values
        if result is None:
            return self._convert(self.prepared.read(next(iter(self.prepared.parts)), index)[self.key])
        return result


class PreparedReader:
    """Random access to a part of a prepared dataset: `.n`, `.read(indices)` -> batch
    arrays, made from the stored records by `convert` (records dict -> batch dict)."""

    def __init__(self, prepared: Prepared, part: str, convert: Callable[[dict], dict]):
        self.prepared, self.part, self._convert = prepared, part, convert
        self.n = prepared.parts[part]

    def read(self, indices) -> dict[str, np.ndarray]:
        return self._convert(self.prepared.read(self.part, indices))


def describe(prepared: Prepared) -> str:
    """One line: what a prepared dataset holds, where, and its size on disk."""
    size = sum(p.stat().st_size for p in prepared.path.iterdir() if p.is_file())
    parts = ", ".join(f"{n} {part}" for part, n in prepared.parts.items())
    return f"{prepared.path}: prepared {prepared.pipeline} dataset {VERSION} ({parts}; {size:,} bytes)"
