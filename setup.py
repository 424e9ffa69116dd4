"""The detector's C extension; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("txguard.fraud._per_record", sources=["src/txguard/fraud/_per_record.c"]),
    ]
)
