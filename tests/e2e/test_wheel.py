"""The wheel: built from the source tree, installed into a fresh venv, serving /health and /docs.

Dependencies come from the test's own environment through a .pth file, so only the wheel
itself is installed (offline); the build uses pip's isolated build environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.relay import free_port

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "mailproxy",
           "templates", "static")


def _copy_sources(target: Path) -> None:
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_data")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, target / name)
    if not (target / "README.md").exists():  # the README lives on another branch for now
        (target / "README.md").write_text("# mailproxy\n", encoding="utf-8")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
def test_wheel_installs_and_serves(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _copy_sources(source)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(source)], check=True, timeout=600)
    [wheel] = dist.glob("mailproxy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mailproxy/_data/templates/docs.html" in names
    assert "mailproxy/_data/static/docs/docs.js" in names
    for shipped in ("templates/ui/base.html", "templates/ui/_overview.html",
                    "static/ui/dashboard.js", "static/ui/dashboard.css",
                    "static/vendor/htmx-2.0.11.min.js", "static/vendor/uPlot-1.6.32.iife.min.js",
                    "static/vendor/README.md"):
        assert f"mailproxy/_data/{shipped}" in names, shipped
    assert "mailproxy/store/sql/sqlite/dashboard.sql" in names
    assert any(n.startswith("mailproxy/store/sql/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]  # the test environment's packages, for deps only
    Path(site, "zz_test_deps.pth").write_text(deps + "\n", encoding="utf-8")

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GMP_", "PYTHON"))}
    env.update(GMP_DATA_DIR=str(tmp_path / "data"), GMP_PORT=str(port), GMP_SMTP_PORT="0",
               HOME=str(tmp_path))
    server = subprocess.Popen([str(venv / "bin" / "mail-proxy"), "serve"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and server.poll() is None:
            try:
                status, _body = _get(f"http://127.0.0.1:{port}/health")
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
                continue
            if status == 200:
                break
        assert status == 200, server.stdout.read().decode() if server.poll() is not None else ""
        status, page = _get(f"http://127.0.0.1:{port}/docs")
        assert status == 200 and b"/openapi.json" in page
        status, _ = _get(f"http://127.0.0.1:{port}/docs/static/docs.js")
        assert status == 200
        status, page = _get(f"http://127.0.0.1:{port}/ui/login")
        assert status == 200 and b"Sign in" in page
        status, _ = _get(f"http://127.0.0.1:{port}/ui/static/vendor/htmx-2.0.11.min.js")
        assert status == 200
        origin = subprocess.run(
            [str(python), "-c", "import mailproxy; print(mailproxy.__file__)"],
            check=True, capture_output=True, text=True, env=env, cwd=tmp_path).stdout
        assert origin.startswith(site)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        assert server.stdout is not None
        server.stdout.close()
