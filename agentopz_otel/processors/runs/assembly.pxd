# Compiled, add_span is a C function that reads the view through SpanView's C struct (spans.pxd); the
# source stays plain Python.

from agentopz_otel.spans cimport SpanView

cpdef add_span(object group, SpanView view)
