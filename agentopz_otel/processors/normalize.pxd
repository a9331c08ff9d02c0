# Compiled, normalize calls these as C functions and fills each view through SpanView's C struct
# (spans.pxd); the source stays plain Python.

from agentopz_otel.spans cimport SpanView

cpdef _fill(SpanView view, object span, dict values, object has_events)
cpdef _decoded_at(object span, object attributes, object native, object index)
