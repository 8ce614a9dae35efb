"""Build steps that pyproject.toml cannot describe: the Cython fast path and the gRPC stubs.

Environment switches:
  RADCORE_NO_EXTENSIONS=1       pure-Python build (the reference codec in radcore/packet.py serves)
  RADCORE_REQUIRE_EXTENSIONS=1  a failed compile is fatal instead of falling back to the pure build
  RADCORE_DEBUG=1               Cython annotate HTML and line tracing for profilers and coverage
"""

import os
import pathlib
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).parent.resolve()
NO_EXTENSIONS = bool(os.environ.get("RADCORE_NO_EXTENSIONS"))
REQUIRE_EXTENSIONS = bool(os.environ.get("RADCORE_REQUIRE_EXTENSIONS"))
DEBUG = bool(os.environ.get("RADCORE_DEBUG"))


class BuildPyWithProtos(build_py):
    """Generate control/_proto from protos/ before the ordinary build_py copies packages.

    `-Icontrol/_proto=protos` maps the proto tree onto the package path, so the generated
    `_pb2_grpc.py` imports `control._proto.radcore.v1` with no post-processing.
    """

    def run(self):
        generate_protos()
        super().run()


def generate_protos() -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(HERE)) for p in (HERE / "protos").rglob("*.proto"))
    if not protos:
        return
    args = [
        "grpc_tools.protoc",
        "-Icontrol/_proto=protos",
        f"-I{pathlib.Path(protoc.__file__).parent / '_proto'}",
        "--python_out=.",
        "--pyi_out=.",
        "--grpc_python_out=.",
        *protos,
    ]
    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {protos}")
    finally:
        os.chdir(cwd)
    for parent in {(HERE / p).parent for p in protos}:
        generated = HERE / "control" / "_proto" / parent.relative_to(HERE / "protos")
        for pkg in [generated, *generated.parents]:
            if pkg == HERE / "control":
                break
            (pkg / "__init__.py").touch()


def extensions():
    if NO_EXTENSIONS:
        print("*** radcore: Pure build ***")
        return []
    from Cython.Build import cythonize

    directives = {"language_level": "3", "boundscheck": False, "wraparound": False}
    macros = []
    if DEBUG:
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE", "1"))
    exts = [
        Extension("radcore._fastpath", ["radcore/_fastpath.pyx"], define_macros=macros,
                  extra_compile_args=["-O3"]),
    ]
    if sys.platform.startswith("linux"):
        # The worker's batch loop, its duplicate cache and its card-auth and accounting lanes
        # (recvmmsg/sendmmsg are Linux calls).
        exts.append(Extension("radcore._dupcache", ["radcore/_dupcache.pyx"], define_macros=macros,
                              extra_compile_args=["-O3"]))
        exts.append(Extension("radcore._lane", ["radcore/_lane.pyx"], define_macros=macros,
                              extra_compile_args=["-O3"]))
        exts.append(Extension("radcore._cardauth", ["radcore/_cardauth.pyx"], define_macros=macros,
                              extra_compile_args=["-O3"]))
        exts.append(Extension("radcore._acctlane", ["radcore/_acctlane.pyx"], define_macros=macros,
                              extra_compile_args=["-O3"]))
        # The benchmark load generator's engine (recvmmsg/sendmmsg/ppoll are Linux calls).
        exts.append(Extension("bench._loadgen", ["bench/_loadgen.pyx"], define_macros=macros,
                              extra_compile_args=["-O3"]))
    built = cythonize(exts, compiler_directives=directives, annotate=DEBUG)
    # cythonize() resets `optional`; set it afterwards so a machine without a compiler still installs.
    for ext in built:
        ext.optional = not REQUIRE_EXTENSIONS
    print("*** radcore: Accelerated build ***")
    return built


if "egg_info" in sys.argv and len(sys.argv) == 2:
    ext_modules = []
else:
    ext_modules = extensions()

setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithProtos})
