"""The built wheel carries schemas/ and templates/, and renders from a fresh venv."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_installs_and_renders(tmp_path, wheelhouse):
    [wheel] = wheelhouse.glob("netbundle-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bundle/_data/templates/appendix.html.j2" in names
    for schema in (REPO / "schemas").glob("*.schema.json"):
        assert f"bundle/_data/schemas/{schema.name}" in names
    assert "bundle/py.typed" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    py = env_dir / "bin" / "python"
    # from the wheelhouse only: the wheel must name every dependency it needs (no index to paper over one)
    installed = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheelhouse),
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    sample = REPO / "tests" / "data" / "hostile" / "control-valid.tar.zst"
    html = tmp_path / "out.html"
    # Run from an unrelated folder so nothing can come from the source tree.
    run = subprocess.run([str(env_dir / "bin" / "netbundle"), "render", str(sample), "-o", str(html)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Network incident evidence" in html.read_text()
    where = subprocess.run([str(py), "-c", "import bundle; print(bundle.__file__)"], capture_output=True, text=True,
                           cwd=tmp_path, check=True).stdout
    assert str(env_dir) in where
    plugin = subprocess.run([str(env_dir / "bin" / "kubectl-netbundle"), "--version"], capture_output=True, text=True)
    assert plugin.returncode == 0 and "netbundle" in plugin.stdout
