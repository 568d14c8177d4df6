"""The one compiled part: hero_procd.engine._spawn (see its source). Everything else is in
pyproject.toml. `optional`: where it cannot be built, the daemon spawns with posix_spawn."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hero_procd.engine._spawn",
            sources=["hero_procd/engine/_spawn.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
