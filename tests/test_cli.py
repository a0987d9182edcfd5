import subprocess
import sys

from edgegan import __version__
from edgegan.cli import main


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "edgegan", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "edgegan", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout


def test_bad_dataset_is_one_line_error(capsys):
    assert main(["train", "--dataset", "nope", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgegan: error: dataset:") and "\n" not in err


def test_bad_device_is_one_line_error(capsys):
    assert main(["train", "--device", "tpu"]) == 2
    assert "device:" in capsys.readouterr().err


def test_train_writes_checkpoint(tmp_path):
    assert main(["train", "--arch", "mlp", "--steps", "20", "--eval-every", "10",
                 "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "generator.pt").is_file() and (tmp_path / "metrics.json").is_file()
