"""Minimal stand-in for setuptools' pkg_resources (removed from recent setuptools): only
parse_version, which the Triton NSA library's flash_nsa.utils uses to compare triton versions.
bench/peers.py puts this folder on sys.path only when `import pkg_resources` fails."""
from packaging.version import Version


def parse_version(text):
    return Version(str(text))
