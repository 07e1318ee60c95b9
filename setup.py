"""Build the compiled core.

Environment switches (compile time):
  NETPOLL_DEBUG=1     invariant checks and live-object counters (chunks, nodes,
                      connections); tests assert they return to zero.
  NETPOLL_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer
                      (run with LD_PRELOAD of libasan, see docs/development.md).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("NETPOLL_DEBUG", "") not in ("", "0")
sanitize = os.environ.get("NETPOLL_SANITIZE", "") not in ("", "0")

macros = [("NETPOLL_DEBUG", "1" if debug else "0")]
cflags = ["-O2" if not (debug or sanitize) else "-O1", "-fno-strict-aliasing"]
ldflags: list[str] = []
if debug or sanitize:
    cflags += ["-g", "-fno-omit-frame-pointer"]
if sanitize:
    cflags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    ldflags += ["-fsanitize=address,undefined"]

inc = os.path.join("src", "netpoll", "includes")


def ext(name: str) -> Extension:
    return Extension(
        f"netpoll.{name}",
        [os.path.join("src", "netpoll", f"{name}.pyx")],
        include_dirs=[inc],
        define_macros=macros,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )


setup(
    ext_modules=cythonize(
        [ext("_buffer"), ext("_core")],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
            # plain builtin methods: cheaper to call than CyFunctions
            "binding": False,
        },
        include_path=[os.path.join("src")],
        # A debug build must not reuse release objects from an earlier build.
        force=debug or sanitize,
    ),
)
