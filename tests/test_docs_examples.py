"""Every fenced code block in README.md and docs/**/*.md is a test (docs/bench and docs/notebooks are links to
bench/ and notebooks/, whose content is generated or tested by tests/test_notebooks.py, and are not walked).

- `sh` / `bash`: run in a fresh temporary directory holding a `configs` link to the repository's configs/ and a
  copy of bench/results.json, with `paradl-tf` and `python` from this interpreter's bin directory first on PATH,
  so nothing lands in the repository. A block whose commands are all `paradl-tf ...` or `python ...` runs one
  command at a time, and a command that appears in several blocks runs once. **Small epochs:** a
  `paradl-tf train` command that sets no `train.epochs` gets `--set train.epochs=1` appended.
- `console`: each `$ ` line runs as shown (no epochs appended); every output line shown under it must appear in the output
  (`...` matches anything). Its exit status is not checked (such blocks show errors on purpose).
- `python`: the block as a script, in a fresh subprocess, in such a directory.
- `yaml`: a whole config, validated with `paradl_tf.load_config`.
- no language, `text`: output, not code. An untagged block that starts with a command is an error: tag it.

A block fails when it exits non-zero, prints a traceback, or runs past its timeout. A block that cannot run here
(it needs two hosts, kubectl, sbatch, a GPU, or half an hour) has an HTML comment on the line before it,
`<!-- not-run: the reason -->`; the reason must be given. A block that another test runs as written (a multi-host
recipe, on emulated hosts) has `<!-- run-by: tests/FILE.py::TEST ... -->` there instead, naming a test that exists.
The commands run three at a time.
"""

import os
import re
import shlex
import signal
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = {"sh", "bash", "console", "python", "yaml"}
OUTPUT_LANGS = {"", "text"}
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")
RUN_BY = re.compile(r"^<!--\s*run-by:\s*(\S+?)::(\w+)\b.*-->$")
COMMAND_TIMEOUT_S = 300
SIMPLE = ("paradl-tf ", "python ")


@dataclass(frozen=True)
class Block:
    path: str
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, "" when the marker gives none; None: no marker
    run_by: tuple[str, str] | None = None  # (test file, test function) that runs this block as written

    @property
    def id(self):
        return f"{self.path}:{self.line}"


def doc_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder, dirs, names in os.walk(ROOT / "docs"):  # does not follow the docs/bench, docs/notebooks links
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
        files += [Path(folder) / n for n in sorted(names) if n.endswith(".md")]
    return files


def blocks_of(path: Path) -> list[Block]:
    lines, found, i = path.read_text().split("\n"), [], 0
    while i < len(lines):
        m = re.match(r"^```\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        start, j = i, i + 1
        while not lines[j].startswith("```"):
            j += 1
        before = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker, run_by = NOT_RUN.match(before), RUN_BY.match(before)
        found.append(Block(str(path.relative_to(ROOT)), start + 1, m.group(1).lower(),
                           "\n".join(lines[start + 1:j]) + "\n", marker.group(1) if marker else None,
                           run_by.groups() if run_by else None))
        i = j + 1
    return found


BLOCKS = [b for f in doc_files() for b in blocks_of(f)]


def commands(code: str) -> list[str]:
    """Logical commands of a shell block: continuations joined, blank lines and comments left out."""
    out, current = [], ""
    for line in code.split("\n"):
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def with_small_epochs(command: str) -> str:
    """`paradl-tf train ...` without train.epochs gets `--set train.epochs=1` (before a redirection or comment), and
    a local cluster START_TIMEOUT_S to start in."""
    command = re.sub(r"\s+#.*$", "", command)
    if not command.startswith("paradl-tf train") or "train.epochs" in command or "--help" in command:
        return command
    head, redirect, tail = command.partition(" > ")
    extra = " --set train.epochs=1"
    if "start_timeout_s" not in head:
        extra += f" --set cluster.start_timeout_s={START_TIMEOUT_S}"
    return f"{head.rstrip()}{extra}" + (f" > {tail}" if redirect else "")


# Three commands run at once here, beside another test file: a local cluster of 6 tasks (3 workers, 2 ps, the
# chief) on 2 cores once had 3 of them not up after cluster.start_timeout_s's default of 60 s. The longer time is
# for this test's load, not the command's.
START_TIMEOUT_S = 240


def _workdir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="paradl_docs_"))
    (d / "configs").symlink_to(ROOT / "configs")
    (d / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "results.json", d / "bench" / "results.json")
    return d


def _env() -> dict:
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1"}


def _run(argv: list[str], stdin: str | None = None) -> tuple[int | None, str]:
    """(exit status, or None on timeout; stdout and stderr). The whole process group is stopped on a timeout."""
    cwd = _workdir()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(stdin, timeout=COMMAND_TIMEOUT_S)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=20)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            out, _ = proc.communicate()
            return None, out
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def units(block: Block) -> list[tuple[str, str]]:
    """What a runnable block runs: ("shell", command) or ("python", source), each run once for all blocks."""
    if block.lang in ("sh", "bash"):
        cmds = commands(block.code)
        if all(c.startswith(SIMPLE) for c in cmds):
            return [("shell", with_small_epochs(c)) for c in cmds]
        return [("shell", block.code)]
    if block.lang == "console":
        return [("shell", line[2:]) for line in block.code.split("\n") if line.startswith("$ ")]  # as shown
    if block.lang == "python":
        return [("python", block.code)]
    return []


@pytest.fixture(scope="module")
def started(request):
    """Starts every unit of the selected blocks, three at a time; a unit shared by several blocks runs once."""
    futures = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        for item in request.session.items:
            block = getattr(item, "callspec", None) and item.callspec.params.get("block")
            if item.originalname == "test_code_block_runs" and block and block.lang != "yaml":
                for kind, text in units(block):
                    if (kind, text) not in futures:
                        argv = ["bash", "-c", text] if kind == "shell" else [sys.executable, "-"]
                        futures[kind, text] = pool.submit(_run, argv, text if kind == "python" else None)
        yield futures
        pool.shutdown(cancel_futures=True)


def _expected_lines_appear(code: str, output: str) -> list[str]:
    missing, expected = [], []
    for line in code.split("\n"):
        if line.startswith("$ "):
            continue
        if line.strip():
            expected.append(line.strip())
    for line in expected:
        pattern = ".*".join(re.escape(part) for part in line.split("..."))
        if not re.search(pattern, output):
            missing.append(line)
    return missing


def test_every_code_block_has_a_known_language():
    unknown = [f"{b.id}: ```{b.lang}" for b in BLOCKS if b.lang not in RUN_LANGS | OUTPUT_LANGS]
    untagged = [b.id for b in BLOCKS if b.lang in OUTPUT_LANGS and b.not_run is None
                and (b.code.lstrip().startswith(("$ ",) + SIMPLE + ("make ",)))]
    assert not unknown, f"a language this test does not know (run it or mark it): {unknown}"
    assert not untagged, f"untagged blocks that hold commands: tag them sh or console: {untagged}"


def test_not_run_markers_give_a_reason():
    assert [b.id for b in BLOCKS if b.not_run == ""] == []


def test_run_by_markers_name_a_test_that_exists():
    """A block left to another test points at it: the file exists and defines that test."""
    dangling = [f"{b.id}: {f}::{name}" for b in BLOCKS if b.run_by for f, name in [b.run_by]
                if not (ROOT / f).is_file() or f"def {name}(" not in (ROOT / f).read_text()]
    assert dangling == []


def test_the_readme_and_docs_have_code_blocks():
    assert {b.path for b in BLOCKS} >= {"README.md", "docs/running.md", "docs/deployment.md"}


RUNNABLE = [b for b in BLOCKS if b.lang in RUN_LANGS and b.not_run is None and b.run_by is None]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_code_block_runs(block, started):
    if block.lang == "yaml":
        from paradl_tf.config import load_config

        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(block.code)
            f.flush()
            load_config(f.name)  # a fragment fails here: mark it <!-- not-run: a fragment ... -->
        return
    for unit in units(block):
        code, output = started[unit].result()
        where = f"{block.id}: {unit[1][:200]!r}\n{output[-4000:]}"
        assert code is not None, f"timed out after {COMMAND_TIMEOUT_S} s: {where}"
        assert "Traceback (most recent call last)" not in output, f"traceback: {where}"
        if block.lang == "console":
            missing = _expected_lines_appear(block.code, output)
            assert not missing, f"output lacks {missing}: {where}"
        else:
            assert code == 0, f"exit status {code}: {where}"


if __name__ == "__main__":  # python tests/test_docs_examples.py: every block and how it is tested
    for b in BLOCKS:
        how = (f"not run: {b.not_run}" if b.not_run is not None else f"run by {'::'.join(b.run_by)}" if b.run_by
               else "output, not code" if b.lang in OUTPUT_LANGS
               else "validated with load_config" if b.lang == "yaml" else "runs: " + "; ".join(
                   u[1].split("\n")[0][:90] for u in units(b)))
        print(f"{b.id} ```{b.lang}: {how}")
