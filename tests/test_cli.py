import json
import subprocess
import sys
import warnings
from pathlib import Path

from _plugin import needs_example_plugin
from pcamflow.cli import main


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


PLUGIN_ONLY = """
[pipeline]
run_dir = "{run}"
converter = "example.solid"
manifest_builder = "none"
trainer = "none"
evaluator = "none"
"""


@needs_example_plugin
def test_validate_accepts_a_good_file(tmp_path, capsys):
    path = write(tmp_path, PLUGIN_ONLY.format(run=tmp_path / "run"))
    assert main(["validate", str(path)]) == 0
    assert "valid; stages: convert" in capsys.readouterr().out


def test_a_settings_error_is_one_line_and_exit_2(tmp_path, capsys):
    path = write(tmp_path, "[train]\nnum_layers = 19\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("pcamflow: error: ")
    assert "train.num_layers: 19 is not one of 18, 20, 32" in err[0]


def test_debug_shows_the_traceback(tmp_path):
    path = write(tmp_path, "[train]\nnum_layers = 19\n")
    out = subprocess.run(
        [sys.executable, "-m", "pcamflow.cli", "--debug", "validate", str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "HyperparameterError" in out.stderr


@needs_example_plugin
def test_an_unknown_stage_name_is_a_usage_error(tmp_path, capsys):
    path = write(
        tmp_path,
        '[pipeline]\nconverter = "example.solid"\nmanifest_builder = "none"\n'
        'trainer = "mypkg.nothing"\n',
    )
    assert main(["validate", str(path)]) == 2
    assert "trainer 'mypkg.nothing' is not registered" in capsys.readouterr().err


@needs_example_plugin
def test_stages_lists_name_kind_class_and_distribution(capsys):
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "KIND", "CLASS", "DISTRIBUTION"]
    row = next(line for line in out.splitlines() if line.startswith("example.solid"))
    assert row.split() == [
        "example.solid",
        "converter",
        "pcamflow_example_plugin:SolidColourConverter",
        "pcamflow-example-plugin",
    ]


@needs_example_plugin
def test_run_runs_a_plugin_stage_then_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    path = write(tmp_path, PLUGIN_ONLY.format(run=run))
    assert main(["run", str(path)]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["stages"]["convert"]["status"] == "completed"
    assert len(list((run / "convert" / "images").rglob("*.jpg"))) == 4 * 2 * 3
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    assert "complete" in capsys.readouterr().out


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "pcamflow"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "COMMAND" in out.stdout


def test_a_run_that_would_spend_on_aws_needs_yes(capsys):
    example = Path(__file__).parents[1] / "examples" / "sagemaker.toml"
    assert main(["run", str(example)]) == 2
    err = capsys.readouterr().err
    assert "starts paid resources or sends billed requests" in err and "--yes" in err


@needs_example_plugin
def test_the_spend_guard_asks_each_stage_not_its_name(tmp_path, capsys):
    """A plugin's stage that says it spends needs --yes, though no name says AWS."""
    run = tmp_path / "run"
    path = write(tmp_path, PLUGIN_ONLY.format(run=run).replace("example.solid", "example.priced"))
    assert main(["run", str(path)]) == 2
    assert "about 0.00 USD" in capsys.readouterr().err
    assert not (run / "run.json").exists()
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "example-store Put x 24" in out and "example-region" in out
    assert main(["run", str(path), "--yes"]) == 0
    assert (run / "run.json").exists()


_WITHOUT_BOTO3 = """
import importlib.abc, sys

class Missing(importlib.abc.MetaPathFinder):
    # as if boto3 were not installed: its import fails the way a missing package's does
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("boto3", "botocore"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from pcamflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_predict_without_boto3_names_the_extra_to_install(tmp_path):
    image = tmp_path / "patch.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_BOTO3, "predict", "http://127.0.0.1:9", str(image)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "ModuleNotFoundError" not in done.stderr
    assert done.stderr.strip() == (
        "pcamflow: error: pcamflow.sagemaker needs the 'sagemaker' extra, which is not "
        "installed: pip install 'pcamflow[sagemaker]' (in a clone of pcamflow: "
        "pip install -e '.[sagemaker]')"
    )


def test_an_old_flat_aws_key_is_named_once_with_its_new_place(tmp_path, caplog):
    # download = true: validate accepts a data.source that the run would fill
    path = write(tmp_path, '[data]\ndownload = true\n[aws]\ninstance_type = "ml.g4dn.xlarge"\n')
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["validate", str(path)]) == 0
    assert caplog.text.count("aws.instance_type has moved to aws.training.instance_type") == 1
    assert not [w for w in seen if issubclass(w.category, FutureWarning)]  # logged, not twice
