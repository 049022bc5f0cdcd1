"""The README's notebook snippets (one per pipeline) run as written."""

import re
import subprocess
import sys

import pytest

from conftest import REPO


def _snippets() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python or a notebook", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_has_one_notebook_snippet_per_pipeline():
    snippets = _snippets()
    for name in ("dna", "tf_binding", "segmentation"):
        assert sum(f"from molml_jax.pipelines import {name}" in s for s in snippets) == 1, name


@pytest.mark.slow
@pytest.mark.parametrize("index", range(3))
def test_notebook_snippet_runs_as_written(index, tmp_path):
    code = _snippets()[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "the snippet printed nothing"
    assert (tmp_path / "runs").is_dir()
