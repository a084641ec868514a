"""Packaging beyond pyproject.toml: the kernel sources (``cuda/``) and recipes (``recipes/``) stay
top-level folders of the repository and are shipped inside the package as ``nca_cli/_cuda`` and
``nca_cli/_recipes`` (found at run time by ``nca_cli.core.resources``)."""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["nca_cli", "nca_cli.*"]), "nca_cli._cuda", "nca_cli._recipes"],
    package_dir={"nca_cli._cuda": "cuda", "nca_cli._recipes": "recipes"},
    package_data={"nca_cli._cuda": ["*.h", "*.cpp", "*.cu", "emu/*.h", "emu/*.cpp"], "nca_cli._recipes": ["*.yaml"]},
)
