"""Build hook: ship the top-level templates/ and static/ inside the wheel.

They stay top-level in the source tree (the dashboard and /docs read them from there in a
checkout); the build copies them to mailproxy/_data/, where mailproxy.resources finds them
in an installed wheel. Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("templates", "static")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # a checkout reads the top-level directories directly
            return
        target = Path(self.build_lib) / "mailproxy" / "_data"
        for name in SHIPPED:
            source = HERE / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithData})
