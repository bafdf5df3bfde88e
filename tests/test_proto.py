"""The committed protobuf code is what grpcio-tools generates from proto/ today."""

import subprocess
import sys

from tests.conftest import REPO


def test_generated_code_is_current():
    result = subprocess.run([sys.executable, str(REPO / "proto" / "generate.py"), "--check"],
                            check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
