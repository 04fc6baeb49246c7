"""The README and docs/ as a reader uses them: every snippet that says it runs, runs.

Each fenced block in README.md and docs/*.md is preceded by a marker:

- ``<!-- snippet: run: ... -->``: run here, in one folder shared by the whole module (a copy
  of examples/ and small synthetic PCam in data/demo-pcam), in document order, the README
  first. Python runs as a script; TOML loads as a settings file; in a shell block every
  ``pcamflow ...`` line runs and must exit 0.
- ``<!-- snippet: not run: WHY -->``: not run, and why (AWS, a GPU, an installation, ...).
- ``<!-- snippet: walkthrough -->``: the diffs and ``validate`` answers of docs/sagemaker.md's
  walk from the local example to SageMaker, applied and checked in turn.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
import runpy
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcamflow.cli import main

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"<!-- snippet: (run|not run|walkthrough)(?::\s*(.*?))?\s*-->\n```(\w*)\n"
                    r"(.*?)^```$", re.S | re.M)
FENCE = re.compile(r"^```\w*$", re.M)


def _blocks(path: Path) -> list[tuple[str, str, str, str]]:
    """(kind, why, language, code) of each marked block of ``path``, in order."""
    return [m.groups("") for m in MARKED.finditer(path.read_text(encoding="utf-8"))]


def test_every_fenced_block_says_whether_it_runs() -> None:
    unmarked = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        fences = len(FENCE.findall(text)) // 2
        marked = _blocks(path)
        if fences != len(marked):
            unmarked.append(f"{path.name}: {fences} blocks, {len(marked)} marked")
        unmarked += [f"{path.name}: a block not run says not why" for kind, why, _, _ in marked
                     if kind == "not run" and not why]
    assert unmarked == []


# --- the runnable snippets --------------------------------------------------------------------


# The README's library example runs examples/local.toml; here with small data, and sizes to
# match: what each setting means stays as the example has it.
SMALLER = {
    r"(?m)^max_jobs = \d+": "max_jobs = 1",
    r"(?m)^epochs = \d+": "epochs = 1",
    r'(?m)^image_shape = "3,48,48"': 'image_shape = "3,32,32"',
    r"(?m)^resize = 48": "resize = 32",
    r"(?m)^bootstrap = \d+": "bootstrap = 20",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from pcamflow.data.synth import write_synthetic_pcam

    folder = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "examples", folder / "examples")
    local = folder / "examples" / "local.toml"
    text = local.read_text(encoding="utf-8")
    for pattern, replacement in SMALLER.items():
        text = re.sub(pattern, replacement, text)
    local.write_text(text, encoding="utf-8")
    write_synthetic_pcam(folder / "data" / "demo-pcam", train=48, valid=24, test=24,
                         seed=0, progress=False)
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only wait on each other
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield folder
    torch.set_num_threads(threads)
    for record in (folder / "runs").rglob("deploy/server.json"):  # nothing left serving
        main(["teardown", str(record.parents[1])])


def _run_python(code: str, name: str) -> None:
    script = Path(f"{name}.py")
    script.write_text(code, encoding="utf-8")
    runpy.run_path(str(script), run_name="__main__")


def _run_toml(code: str, name: str) -> None:
    from pcamflow import Settings

    path = Path(f"{name}.toml")
    path.write_text(code, encoding="utf-8")
    Settings.from_toml(path)


def _commands(code: str) -> list[str]:
    """The ``pcamflow`` command lines of a shell block (``$ `` prompts, comments dropped)."""
    joined = code.replace("\\\n", " ")
    lines = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        elif not line or line.startswith("#") or code.lstrip().startswith("$"):
            continue  # a console block's output, or a comment
        lines.append(shlex.split(line, comments=True))
    return [" ".join(words) for words in lines if words]


def _run_shell(code: str, name: str) -> None:
    commands = _commands(code)
    assert commands, f"{name}: no command in the block"
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "pcamflow", f"{name}: only pcamflow commands run here: {command}"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(words[1:]) == 0, f"{name}: {command}"


RUNNERS = {"python": _run_python, "toml": _run_toml, "console": _run_shell,
           "bash": _run_shell, "sh": _run_shell}


def _runnable() -> list[tuple[str, str, str, str]]:
    found = []
    for path in DOCS:
        blocks = [b for b in _blocks(path) if b[0] == "run"]
        for number, (_, why, language, code) in enumerate(blocks, 1):
            found.append((f"{path.stem}-{number}", why, language, code))
    return found


def test_the_runnable_snippets_run(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ran = []
    plugin = importlib.util.find_spec("pcamflow_example_plugin") is not None
    for name, why, language, code in _runnable():
        assert language in RUNNERS, f"{name}: no way to run a {language!r} block"
        if "example plugin" in why and not plugin:
            continue  # tests/_plugin.py: the plugin's tests skip without it too
        RUNNERS[language](code, name)
        ran.append(name)
    # what the snippets say they make is there
    assert (workspace / "runs" / "demo" / "report.html").is_file()
    assert (workspace / "runs" / "demo" / "train-again" / "model.tar.gz").is_file()
    assert (workspace / "out" / "report.html").is_file()
    assert {"README-1", "README-2", "plugins-1", "training-2"} <= set(ran)


def test_the_readme_example_leaves_no_server_running(workspace: Path) -> None:
    from pcamflow.artifacts import Endpoint
    from pcamflow.pipeline import read_run_record

    record = read_run_record(workspace / "runs" / "demo").get("deploy")
    if record is None:
        pytest.skip("the snippets did not run")
    endpoint = record.load_artifact()
    assert isinstance(endpoint, Endpoint)
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{endpoint.url}/ping", timeout=2)


# --- the command table ------------------------------------------------------------------------


def test_the_readme_command_table_is_the_parsers() -> None:
    from pcamflow.commands.reference import BEGIN, END, command_table

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index(BEGIN) + len(BEGIN): text.index(END)].strip("\n") + "\n"
    assert table == command_table(), "run: python -m pcamflow.commands.reference README.md"
    for wanted in ("`pcamflow plan CONFIG [--json] [--run] [--yes] [--local-mode]`",
                   "[--train N]", "(default 2048)", "`pcamflow explore SRC OUT [--per-class N]",
                   "`pcamflow download DEST", "`pcamflow report RUN_DIR_OR_CONFIG`"):
        assert wanted in table


# --- the walk from the local example to SageMaker ---------------------------------------------


def _apply(text: str, diff: str) -> str:
    """Apply a diff block's hunks (split at ``@@``): context and ``-`` lines, found in order,
    become context and ``+`` lines."""
    for hunk in re.split(r"(?m)^@@.*\n", diff):
        lines = hunk.splitlines()
        if not lines:
            continue
        old = [ln[1:] for ln in lines if ln[:1] in (" ", "-") or ln == ""]
        new = [ln[1:] for ln in lines if ln[:1] in (" ", "+") or ln == ""]
        after = "\n".join(new) + "\n"
        if not any(old):  # no context: added at the end
            text = text.rstrip("\n") + "\n\n" + after
            continue
        before = "\n".join(old) + "\n"
        assert text.count(before) == 1, f"the hunk does not apply:\n{hunk}"
        text = text.replace(before, after)
    return text


def test_the_walk_from_local_to_sagemaker_validates_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("botocore")
    from pcamflow.data.synth import write_synthetic_pcam

    # no AWS configuration: the region must come from the settings
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.chdir(tmp_path)
    write_synthetic_pcam(tmp_path / "data" / "demo-pcam", train=8, valid=4, test=4,
                         seed=0, progress=False)
    settings = tmp_path / "local.toml"
    text = (ROOT / "examples" / "local.toml").read_text(encoding="utf-8")
    steps = [b for b in _blocks(ROOT / "docs" / "sagemaker.md") if b[0] == "walkthrough"]
    assert [language for _, _, language, _ in steps] == ["diff", "console"] * 3
    for (_, _, _, diff), (_, _, _, console) in zip(steps[::2], steps[1::2], strict=True):
        text = _apply(text, diff)
        settings.write_text(text, encoding="utf-8")
        command, *expected = console.splitlines()
        assert command == "$ pcamflow validate local.toml"
        caplog.clear()
        status = main(["validate", "local.toml"])
        captured = capsys.readouterr()
        said = (captured.out + captured.err).splitlines() + caplog.messages
        assert status == (0 if expected[-1].endswith("valid; stages: convert, manifests, tune, "
                                                     "train, evaluate, deploy") else 2)
        for line in expected:
            assert line in said, f"documented, not said: {line}\nsaid: {said}"
