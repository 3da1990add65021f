"""Build of the C extensions ``cdc.mapping._fastejson`` and ``cdc._fastevents``
(everything else is in pyproject.toml). ``pip install -e .`` builds them in place next
to their sources."""

from setuptools import Extension, setup  # type: ignore[import-untyped]

setup(
    ext_modules=[
        Extension(
            "cdc.mapping._fastejson",
            ["cdc/mapping/_fastejson.c", "cdc/mapping/_ejson_text.c",
             "cdc/mapping/_ejson_doc.c", "cdc/mapping/_copyrows.c",
             "cdc/mapping/_copyrows_args.c"],
            depends=["cdc/mapping/_ejson.h", "cdc/mapping/_copyrows.h"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-fvisibility=hidden"],
        ),
        Extension(
            "cdc._fastevents",
            ["cdc/_fastevents.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
    ]
)
