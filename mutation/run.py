"""Mutation testing of pcamflow's core, one module group at a time, with mutmut.

Each group names the source files mutmut mutates and the test files that cover them. mutmut
runs once per group, in its own working folder under ``build/mutation/<group>`` (a
``pyproject.toml`` holding that group's ``[tool.mutmut]`` table, with ``src`` and ``tests``
linked to this checkout's), so a mutant is only ever run against its own group's tests, and
mutmut picks among those the tests that call the mutated function. The script then prints one
table (mutants, killed, survived, marked equivalent, score per group) and lists the survivors.

Run it as ``tox -e mutation`` (or ``python mutation/run.py [GROUP ...]`` in an environment
with the ``local``, ``sagemaker`` and ``test`` extras and mutmut). ``--list`` names the groups.
The exit status is 1 when a group scores under ``--target`` (80% unless told).

A mutant counts as killed when a test failed, timed out or crashed with it; as survived when
every selected test passed, or no test calls the mutated function. Mutants that cannot change
behaviour are listed in ``EQUIVALENT`` with the reason, and left out of the score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"


class GroupFailed(Exception):
    """mutmut could not run a group (its clean test run failed, for one)."""


@dataclass(frozen=True)
class Group:
    """One mutmut run: the files it mutates and the tests that may kill their mutants.

    Attributes:
        name: the group's name on the command line and in the table.
        files: source files to mutate, relative to the checkout.
        tests: pytest arguments selecting the tests (files or node ids).
        only: mutant-name patterns (mutmut's ``module.x_function*``); empty: every mutant of
            ``files``. Used where one function of a larger module is the thing under test.
    """

    name: str
    files: tuple[str, ...]
    tests: tuple[str, ...]
    only: tuple[str, ...] = field(default=())


GROUPS: tuple[Group, ...] = (
    Group("metrics", ("src/pcamflow/evaluation/metrics.py",),
          ("tests/evaluation/test_metrics.py", "tests/evaluation/test_metrics_exact.py")),
    # the hyperparameter contract, and what a SageMaker training job is sent
    Group("hyperparameters",
          ("src/pcamflow/hyperparameters.py", "src/pcamflow/sagemaker/trainer.py"),
          ("tests/test_hyperparameters.py", "tests/test_hyperparameter_contract.py",
           "tests/sagemaker/test_training_hyperparameters.py"),
          only=("pcamflow.hyperparameters.*",
                "pcamflow.sagemaker.trainer.x_training_hyperparameters*")),
    Group("manifests", ("src/pcamflow/data/manifests.py",),
          ("tests/data/test_data_manifests.py", "tests/data/test_data_manifest_lines.py")),
    # the resume logic: what is already converted, what is left, whose output folder it is
    Group("convert", ("src/pcamflow/data/convert.py",), ("tests/data/test_data_convert.py",),
          only=tuple(f"pcamflow.data.convert.x_{name}_*" for name in (
              "_whole_jpeg", "_existing", "_prepare_output", "_todo", "_record_problem",
              "_claim", "convert_pcam"))),
    # the validation of the HDF5 files (layout, schema, sizes, checksums)
    Group("pcam", ("src/pcamflow/data/pcam.py",),
          ("tests/data/test_data_pcam.py", "tests/data/test_data_pcam_checks.py"),
          only=tuple(f"pcamflow.data.pcam.x_{name}_*" for name in (
              "_find", "_is_our_decompression", "check_schema", "_marked", "_check_layout",
              "_read_labels", "_verify", "check_split"))),
    # the checkpoint folder's contract; the resume-equals-uninterrupted tests of the same file
    # train real models (too slow to run per mutant) and are deselected here
    Group("checkpoint", ("src/pcamflow/local/training/checkpoint.py",),
          ("tests/local/training/test_checkpoint.py", "-k",
           "not interrupted_and_resumed and not another_runs")),
    # request parsing and the API-key check (not the rest of the guards: host, body limits)
    Group("payloads",
          ("src/pcamflow/local/serving/payloads.py", "src/pcamflow/local/serving/guards.py"),
          ("tests/local/serving/test_payloads.py",),
          only=("pcamflow.local.serving.payloads.*",
                "pcamflow.local.serving.guards.x_api_key_check*",
                "pcamflow.local.serving.guards.x__given_key*")),
    # costs and totals, and the image counts the SageMaker stages plan with
    Group("plan", ("src/pcamflow/plan.py", "src/pcamflow/sagemaker/planning.py"),
          ("tests/test_plan.py", "tests/sagemaker/test_planning_counts.py"),
          only=("pcamflow.plan.*", "pcamflow.sagemaker.planning.x_planned_counts*",
                "pcamflow.sagemaker.planning.x_planned_manifests*",
                "pcamflow.sagemaker.planning.x_source_counts*")),
    Group("registry", ("src/pcamflow/registry.py",), ("tests/test_registry.py",)),
    # the [tune] checks are tested with the tuner
    Group("config", ("src/pcamflow/config.py",),
          ("tests/test_config.py",
           "tests/local/tuning/test_tuner.py::test_bad_tuning_settings_are_refused_with_the_key")),
)

# mutant name (or fnmatch pattern) -> why it cannot change behaviour, or cannot be measured.
# A name that no longer matches any mutant is reported.
EQUIVALENT: dict[str, str] = {
    "pcamflow.hyperparameters.x__kind__mutmut_*":
        "runs once, at import, to fill _KIND: mutmut switches a mutant on only after the import",
    "pcamflow.hyperparameters.xǁHyperparametersǁfrom_sagemaker__mutmut_15":
        "passes None as _parse's default, an argument _parse does not use",
    "pcamflow.data.manifests.x_uri_to_path__mutmut_1[78]":
        "the Windows drive-letter test: on POSIX os.name is never 'nt', so the length never counts",
    "pcamflow.data.manifests.x_uri_to_path__mutmut_2[01]":
        "compares os.name with another string: never equal on POSIX, as 'nt' is not",
    "pcamflow.data.manifests.x_read_manifest__mutmut_6":
        "'UTF-8' for 'utf-8': Python's codec names are case-insensitive",
    "pcamflow.data.manifests.xǁLocalManifestBuilderǁfingerprint__mutmut_[5-8]":
        "renames a key of the digested payload: the digest differs, but every fingerprint a run "
        "compares is made by the same code, so equal stays equal and different stays different",
    "pcamflow.config.x__choices__mutmut_*":
        "runs at import, when the settings classes are defined: before mutmut switches it on",
    "pcamflow.config.xǁSettingsǁfrom_dict__mutmut_9":
        "attrs.evolve(settings, source=None) when source is None: an equal object",
    "pcamflow.config.xǁSettingsǁfrom_toml__mutmut_7":
        "'UTF-8' for 'utf-8': Python's codec names are case-insensitive",
    "pcamflow.config.xǁSettingsǁto_dict__mutmut_22":
        "typing.cast(None, out): cast does nothing at run time",
    "pcamflow.local.training.checkpoint.xǁCheckpointDirǁload__mutmut_[79]":
        "weights_only=None or left out: torch (2.6 on, 2.13 pinned) then loads weights only",
    "pcamflow.data.convert.x__claim__mutmut_2[24679]":
        "how the record is written: its indentation (json.loads reads the same object back) or "
        "the encoding of ASCII text (json.dumps escapes everything else)",
    "pcamflow.data.convert.x__record_problem__mutmut_[57]":
        "reads the record, ASCII text (json.dumps escapes everything else), in the locale's "
        "encoding or in 'UTF-8' spelt in capitals: the same text",
    "pcamflow.data.convert.x__whole_jpeg__mutmut_19":
        "read(None) two bytes before the end of the file returns the same two bytes as read(2)",
    "pcamflow.data.convert.x__whole_jpeg__mutmut_20":
        "read(3) two bytes before the end of the file returns the same two bytes as read(2)",
    "pcamflow.data.convert.x__existing__mutmut_[6-9]":
        "what a missing folder gives: convert_pcam makes every label folder before it looks "
        "into one, so the branch is never taken",
    "pcamflow.data.manifests.x_build_manifests__mutmut_70":
        "len(found) >= cap: at the cap, the sample is every image, sorted back: the same list",
    "pcamflow.data.manifests.x_build_manifests__mutmut_7[357]":
        "argsort of distinct image indices: every sort kind gives the same order",
    "pcamflow.data.manifests.x_build_manifests__mutmut_11[357]":
        "argsort of distinct image indices: every sort kind gives the same order",
    "pcamflow.data.manifests.x_build_manifests__mutmut_84":
        "replace=None is false: numpy samples without replacement, as with replace=False",
    "pcamflow.data.manifests.x_build_manifests__mutmut_98":
        "np.full infers int64 from the int label position, the dtype it was given",
    "pcamflow.data.manifests.x_build_manifests__mutmut_101":
        "np.full infers int64 from the int label position, the dtype it was given",
    "pcamflow.data.manifests.x_build_manifests__mutmut_10[79]":
        "the empty index array of a split with no classes: its dtype is never used",
    "pcamflow.data.manifests.x_build_manifests__mutmut_14[69]":
        "zip over lists made from the same order: equal lengths, strict or not",
    "pcamflow.data.manifests.x_build_manifests__mutmut_150":
        "zip over lists made from the same order: equal lengths, strict or not",
    "pcamflow.data.manifests.x_build_manifests__mutmut_16[489]":
        "zip over lists made from the same order: equal lengths, strict or not",
    "pcamflow.local.serving.payloads.x__to_rgb__mutmut_1":
        "an opaque palette, grey or RGB image taken through RGBA and over white: the same RGB",
    "pcamflow.local.serving.payloads.x__to_rgb__mutmut_3[4-7]":
        "Image.new clamps a channel of 256 to 255: the same white background",
    "pcamflow.local.serving.payloads.x__to_rgb__mutmut_4[45]":
        "converting an RGB image to RGB again gives the same pixels",
    "pcamflow.local.serving.payloads.x__to_rgb__mutmut_5[13]":
        "an RGB image's array is uint8 without being told",
    "pcamflow.local.serving.payloads.x_decode_image__mutmut_[12]":
        "the default type misspelt: media_type lowercases it, or it is unknown and an unknown "
        "type takes the generic type's formats, the default's own",
    "pcamflow.local.serving.payloads.x_decode_npy__mutmut_7[79]":
        "numpy reads the reshape order 'f' and 'c' as 'F' and 'C'",
    "pcamflow.local.serving.payloads.x_media_type__mutmut_5":
        "split(';') with no limit: the first part is the same",
    "pcamflow.local.serving.payloads.x_media_type__mutmut_10":
        "split(';') with a limit of 2: the first part is the same",
    "pcamflow.local.serving.guards.x__given_key__mutmut_4":
        "Starlette looks headers up without regard to case",
    "pcamflow.local.serving.guards.x__given_key__mutmut_14":
        "Starlette looks headers up without regard to case",
    "pcamflow.local.serving.guards.x__given_key__mutmut_15":
        "a missing Authorization read as 'XXXX' instead of '': neither is Bearer nor Basic",
    "pcamflow.data.manifests.x__scan__mutmut_20":
        "np.array([]).astype(int64) for np.zeros(0, int64): the same empty int64 array",
}


def _equivalent(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in EQUIVALENT)

KILLED = {"killed", "timeout", "segfault", "caught by type check"}
SURVIVED = {"survived", "no tests"}


def _mutmut_table(group: Group) -> str:
    lines = [
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {json.dumps(list(group.files))}",
        f"pytest_add_cli_args_test_selection = {json.dumps(list(group.tests))}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
        # torch and the HTTP servers in the tests are not fork-safe from a process that ran them
        'process_isolation = "forkserver"',
        "use_git_change_detection = false",
        # tests read the examples' settings files and the docs' configuration reference
        'also_copy = ["examples", "docs"]',
    ]
    return "\n".join(lines) + "\n"


def _prepare(group: Group, resume: bool = False) -> Path:
    work = WORK / group.name
    table = _mutmut_table(group)
    if resume and (work / "mutants").is_dir() and (work / "pyproject.toml").read_text(
            encoding="utf-8").endswith(table):
        return work  # mutmut keeps the results it has and tries the mutants left
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (work / "pyproject.toml").write_text(project + "\n" + table, encoding="utf-8")
    for name in ("src", "tests", "examples", "docs"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    # Exists before Python starts, or the import system caches it as absent (see PYTHONPATH).
    (work / "mutants" / "src").mkdir(parents=True)
    return work


def _results(work: Path, group: Group) -> dict[str, str]:
    """Every mutant of the group and its mutmut status, from mutmut's ``.meta`` files."""
    from mutmut.stats import status_by_exit_code

    statuses: dict[str, str] = {}
    for source in group.files:
        meta = work / "mutants" / (source + ".meta")
        if not meta.exists():
            raise SystemExit(f"{group.name}: mutmut left no results for {source} ({meta})")
        data = json.loads(meta.read_text(encoding="utf-8"))
        for name, code in data["exit_code_by_key"].items():
            if group.only and not any(fnmatch(name, pattern) for pattern in group.only):
                continue
            statuses[name] = status_by_exit_code[code]
    return statuses


def run_group(group: Group, jobs: int, budget: float | None,
              resume: bool = False) -> tuple[dict[str, str], float]:
    """Run mutmut for one group; its mutants' statuses and the seconds it took.

    With a ``budget`` (seconds), mutmut is stopped when it runs out; the mutants it had not
    tried yet are ``not checked`` (mutmut saves each result as it comes, and tries the mutants
    with the fastest tests first).
    """
    work = _prepare(group, resume)
    env = dict(os.environ)
    # Tests that start a Python subprocess (a server, the converter) import the mutated copy too.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(work / "mutants" / "src"), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "Agg")
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *group.only]
    start = time.monotonic()
    log = work / "mutmut.log"
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # mutmut, its fork server and its workers
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            returncode = 0
    took = time.monotonic() - start
    if returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise GroupFailed(f"{group.name}: mutmut failed (exit {returncode}); "
                          f"its log is {log}:\n{tail}")
    return _results(work, group), took


def _score(killed: int, survived: int) -> float:
    return 100.0 * killed / (killed + survived) if killed + survived else 100.0


def report(results: dict[str, tuple[dict[str, str], float]]) -> tuple[str, list[str]]:
    """The table and the survivors' lines, and (second) the names of groups under target.

    The score is killed / (killed + survived + other) over the mutants mutmut tried; marked
    equivalents and mutants left unchecked (a budget ran out) are not in it.
    """
    rows = [f"{'module':<16}{'mutants':>8}{'killed':>8}{'survived':>9}{'equivalent':>11}"
            f"{'other':>7}{'unchecked':>10}{'score':>8}{'seconds':>9}"]
    survivors: list[str] = []
    scores: dict[str, float] = {}
    for name, (statuses, took) in results.items():
        equivalent = [m for m in statuses if _equivalent(m)]
        counted = {m: s for m, s in statuses.items()
                   if not _equivalent(m) and s != "not checked"}
        unchecked = sum(s == "not checked" for s in statuses.values())
        killed = sum(s in KILLED for s in counted.values())
        survived = sum(s in SURVIVED for s in counted.values())
        other = len(counted) - killed - survived
        scores[name] = _score(killed, len(counted) - killed)
        rows.append(f"{name:<16}{len(statuses):>8}{killed:>8}{survived:>9}{len(equivalent):>11}"
                    f"{other:>7}{unchecked:>10}{scores[name]:>7.1f}%{took:>9.0f}")
        survivors += [f"  {m}  ({s})" for m, s in sorted(counted.items()) if s not in KILLED]
    text = "\n".join(rows)
    contradicted = sorted(m for statuses, _ in results.values() for m, s in statuses.items()
                          if _equivalent(m) and s in KILLED)
    if contradicted:  # a test failed with a mutant marked as unable to change behaviour
        text += ("\n\nMarked equivalent, yet a test failed with it (check the mark, or a "
                 "flaky test):\n" + "\n".join(f"  {m}  ({results_status(results, m)})"
                                               for m in contradicted))
    if survivors:
        text += "\n\nSurvivors (show one with: cd build/mutation/GROUP && mutmut show NAME):\n"
        text += "\n".join(survivors)
    return text, [name for name, score in scores.items() if score < TARGET]


def results_status(results: dict[str, tuple[dict[str, str], float]], name: str) -> str:
    return next(statuses[name] for statuses, _ in results.values() if name in statuses)


TARGET = 80.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named groups (all by default), print the table; 1 if one is under target."""
    global TARGET
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", help="groups to run (default: all)")
    parser.add_argument("--list", action="store_true", help="name the groups and exit")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="mutants run at once (default: the CPU count)")
    parser.add_argument("--target", type=float, default=TARGET, help="lowest score per group (%%)")
    parser.add_argument("--json", type=Path, help="also write the statuses to this file")
    parser.add_argument("--budget", type=float, default=None,
                        help="stop a group's mutmut after this many seconds (default: none)")
    parser.add_argument("--report", action="store_true",
                        help="print the table of the results in build/mutation, running nothing")
    parser.add_argument("--resume", action="store_true",
                        help="keep the results of an earlier (budgeted) run of the same groups "
                             "and try only the mutants it left; the tests must be unchanged")
    args = parser.parse_args(argv)
    TARGET = args.target
    by_name = {g.name: g for g in GROUPS}
    if args.list:
        for group in GROUPS:
            print(f"{group.name:<16}{', '.join(group.files)}  <-  {', '.join(group.tests)}")
        return 0
    unknown = [name for name in args.groups if name not in by_name]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    chosen = [by_name[name] for name in args.groups] if args.groups else list(GROUPS)
    results: dict[str, tuple[dict[str, str], float]] = {}
    failed: list[str] = []
    start = time.monotonic()
    for group in chosen:
        if not args.report:
            print(f"[{time.monotonic() - start:6.0f}s] {group.name}: mutmut over "
                  f"{', '.join(group.files)}", flush=True)
        if args.report:
            if (WORK / group.name / "mutants").is_dir():
                results[group.name] = (_results(WORK / group.name, group), 0.0)
            continue
        try:
            results[group.name] = run_group(group, args.jobs, args.budget, args.resume)
        except GroupFailed as error:
            print(error, flush=True)
            failed.append(group.name)
    every = {m for statuses, _ in results.values() for m in statuses}
    stale = sorted(p for p in EQUIVALENT if not any(fnmatch(m, p) for m in every)
                   and any(p.startswith(_modules(g)) for g in chosen))
    text, under = report(results)
    print()
    print(text)
    if stale:
        print("\nMarked equivalent but no longer generated (update EQUIVALENT):")
        print("\n".join(f"  {m}" for m in stale))
    print(f"\nTotal {time.monotonic() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({k: v[0] for k, v in results.items()}, indent=1))
    if failed:
        print(f"Could not run: {', '.join(failed)}")
    if under:
        print(f"Under {TARGET:.0f}%: {', '.join(under)}")
    if under or failed:
        return 1
    return 0


def _modules(group: Group) -> tuple[str, ...]:
    return tuple(f.removeprefix("src/").removesuffix(".py").replace("/", ".") + "."
                 for f in group.files)


if __name__ == "__main__":
    sys.exit(main())
