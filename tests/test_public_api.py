import pkgutil
import subprocess
import sys

import pcamflow
import pcamflow.errors


def test_all_lists_exactly_the_public_names():
    public = {name for name in dir(pcamflow) if not name.startswith("_")}
    # submodules become attributes once imported; they are not part of __all__
    modules = {info.name for info in pkgutil.iter_modules(pcamflow.__path__)}
    assert set(pcamflow.__all__) - {"__version__"} == public - modules
    for name in pcamflow.__all__:
        assert getattr(pcamflow, name) is not None


def test_every_error_derives_from_the_root_and_is_drawn_in_the_docstring():
    errors = [getattr(pcamflow.errors, n) for n in pcamflow.errors.__all__ if n != "exit_code"]
    for error in errors:
        assert issubclass(error, pcamflow.errors.PcamflowError)
        assert error.__name__ in pcamflow.errors.__doc__


def test_the_core_imports_neither_torch_nor_the_sagemaker_sdk():
    code = (
        "import sys, pcamflow, pcamflow.cli, pcamflow.registry, pcamflow.testing\n"
        "import pcamflow.tracking, pcamflow.evaluation.run_report, pcamflow.commands.report\n"
        "from pcamflow.registry import Registry\n"
        "Registry.from_entry_points()\n"
        "names = ('torch', 'sagemaker', 'boto3', 'optuna', 'fastapi', 'mlflow')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
