"""Every ```python block of the README and docs/*.md runs, as a user would run it.

The blocks run in a child process without TRITON_INTERPRET (which conftest sets for this
process), so backend='auto' means what it means to a user of this machine. See
tests/doc_blocks.py for the no-test convention.
"""

import os
import subprocess
import sys

import pytest

from tests.doc_blocks import ROOT, documentation_files, python_blocks

RUNNER = ROOT / "tests" / "doc_blocks.py"
DOCUMENTED = [path for path in documentation_files() if python_blocks(path)]


def run_runner(*paths, cwd):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(RUNNER), *map(str, paths)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("path", DOCUMENTED, ids=[p.name for p in DOCUMENTED])
def test_python_blocks_run(path, tmp_path):
    result = run_runner(path, cwd=tmp_path)  # a scratch folder: blocks may write files
    assert result.returncode == 0, result.stderr[-6000:]


def test_readme_blocks_are_found_and_run():
    blocks = python_blocks(ROOT / "README.md")
    runnable = [block for block in blocks if block.skip_reason is None]
    assert len(runnable) >= 3, [block.name for block in blocks]


def test_a_broken_block_fails_with_its_file_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n```python\nx = 1\n```\n\n<!-- no-test: needs a GPU -->\n"
                    "```python\nraise SystemError('skipped block ran')\n```\n\n"
                    "```bash\nexit 1\n```\n\n```python\ny = x + 1\n```\n")
    blocks = python_blocks(page)
    assert [(b.line, b.skip_reason) for b in blocks] == [(4, None), (9, "needs a GPU"),
                                                          (17, None)]
    result = run_runner(page, cwd=tmp_path)
    assert result.returncode == 1
    # Each block has a fresh namespace: the last one cannot see the first one's x.
    assert "NameError" in result.stderr and f'File "{page}", line 17' in result.stderr
    assert "skipped block ran" not in result.stderr


@pytest.mark.parametrize("text", ["<!-- no-test -->\n```python\npass\n```\n",
                                  "```python\npass\n"])
def test_malformed_markup_is_refused(tmp_path, text):
    page = tmp_path / "page.md"
    page.write_text(text)
    with pytest.raises(ValueError, match="page.md:1"):
        python_blocks(page)
