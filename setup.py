"""Build of the C extension ``cdc.mapping._fastejson`` (everything else is in
pyproject.toml). ``pip install -e .`` builds it in place next to its sources."""

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
        )
    ]
)
