"""The optional compiled hot path: the modules every span goes through, compiled unchanged by Cython,
and the C modules of NATIVE_MODULES, each with a pure-Python way the package takes without it.

Each is built into an extension module beside its source, which Python imports ahead of the source
(`agentopz_otel.compiled` says when it doesn't, and AGENTOPZ_PURE_PYTHON turns them off). Nothing here
is required: without Cython or a C compiler the package installs as pure Python and runs the same code.
A module here must hold no pydantic model with methods: pydantic does not take compiled functions as
methods of a model.
"""

from setuptools import Extension, setup

HOT_MODULES = (
    "agentopz_otel.spans",
    "agentopz_otel.metrics",
    "agentopz_otel.receivers.otlp",
    "agentopz_otel.semconv.dialects",
    "agentopz_otel.semconv.events",
    "agentopz_otel.semconv.failures",
    "agentopz_otel.semconv.providers",
    "agentopz_otel.semconv.values",
    "agentopz_otel.processors.normalize",
    "agentopz_otel.processors.prompt_version",
    "agentopz_otel.processors.runs.assembler",
    "agentopz_otel.processors.runs.assembly",
    "agentopz_otel.processors.runs.publishing",
    "agentopz_otel.exporters.prometheus",
)

# Span attributes read from the request's bytes (normalize reads them through protobuf without it).
NATIVE_MODULES = ("agentopz_otel.processors.normalize_wire",)


def compiled_extensions() -> list[Extension]:
    native = [Extension(name, [name.replace(".", "/") + ".c"], optional=True) for name in NATIVE_MODULES]
    try:
        from Cython.Build import cythonize
    except ImportError:  # a build without isolation, in an environment without Cython
        return native

    sources = [Extension(name, [name.replace(".", "/") + ".py"]) for name in HOT_MODULES]
    # Annotations are left as documentation: compiled code accepts what the source does.
    directives = {"language_level": 3, "annotation_typing": False}
    extensions = cythonize(sources, compiler_directives=directives, build_dir="build/cython", quiet=True, nthreads=2)
    for extension in extensions:
        extension.optional = True  # a failed compile leaves the source (cythonize does not carry this over)
    return extensions + native


setup(ext_modules=compiled_extensions(), options={"build_ext": {"parallel": 2}})
