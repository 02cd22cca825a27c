"""requirements.txt pins must agree with the constraints lock (the install step checks the venv too)."""

import subprocess
import sys

from include.config import PROJECT_ROOT


def test_requirements_agree_with_lock_and_venv():
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "tools" / "check_lock.py")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "agree" in proc.stdout


def test_lock_check_catches_a_mismatch(tmp_path):
    import shutil

    for name in ("requirements.txt", "constraints.txt"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    (tmp_path / "tools").mkdir()
    shutil.copy(PROJECT_ROOT / "tools" / "check_lock.py", tmp_path / "tools" / "check_lock.py")
    req = (tmp_path / "requirements.txt").read_text().replace("pandas==2.3.3", "pandas==2.3.2")
    (tmp_path / "requirements.txt").write_text(req)
    proc = subprocess.run([sys.executable, str(tmp_path / "tools" / "check_lock.py"), "--no-installed"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "pandas: requirements.txt pins 2.3.2, constraints.txt locks 2.3.3" in proc.stderr
