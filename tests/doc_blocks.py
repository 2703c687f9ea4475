"""The ```python blocks of the README and docs/*.md, and a runner that executes them.

Convention: every block fenced as ```python runs, each on its own in a fresh namespace (a reader
copies one block, so each block imports and defines all it uses). A block that must not run
(it needs a GPU, a downloaded checkpoint, ...) has, on the line right above its fence, an HTML
comment giving the reason, which renders as nothing:

    <!-- no-test: needs the authors' checkpoint file -->

Blocks in other languages (```bash, plain ```) never run.

Run as a script, ``python tests/doc_blocks.py FILE.md ...`` executes the runnable blocks of each
file in order, prints each failure's traceback (its frames name FILE.md:LINE) and exits 1 if any
failed.
"""

from __future__ import annotations

import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\S*)\s*$")
NO_TEST = re.compile(r"^<!--\s*no-test:\s*(\S.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced ```python block; ``line`` is the 1-based line of its first code line."""

    path: Path
    line: int
    code: str
    skip_reason: str | None

    @property
    def name(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"


def documentation_files() -> list[Path]:
    """The README and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[Block]:
    """Every ```python block of ``path``, with the reason of its no-test comment if it has one.

    Raises ValueError for a fence left open, or a no-test comment without a reason.
    """
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            if "no-test" in lines[index] and not NO_TEST.match(lines[index].strip()):
                raise ValueError(f"{path}:{index + 1}: write '<!-- no-test: REASON -->'")
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
        if end is None:
            raise ValueError(f"{path}:{index + 1}: code fence never closed")
        if match.group(1) == "python":
            above = NO_TEST.match(lines[index - 1].strip()) if index else None
            blocks.append(Block(path, index + 2, "\n".join(lines[index + 1:end]) + "\n",
                                above.group(1) if above else None))
        index = end + 1
    return blocks


def run_blocks(blocks: list[Block]) -> list[str]:
    """Execute each runnable block in a fresh namespace; the names of those that raised."""
    failed = []
    for block in blocks:
        if block.skip_reason:
            continue
        # Pad with blank lines so tracebacks give the Markdown file's own line numbers.
        code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
        try:
            exec(code, {"__name__": "__main__"})
        except Exception:
            print(f"--- {block.name} failed:", file=sys.stderr)
            traceback.print_exc()
            failed.append(block.name)
    return failed


def main(paths: list[str]) -> int:
    failed = []
    for path in paths:
        failed += run_blocks(python_blocks(Path(path).resolve()))
    print(f"{len(failed)} block(s) failed: {failed}" if failed else "every block ran")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
