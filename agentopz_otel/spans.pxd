# Compiled, SpanView is an extension type: its fields are slots of a C struct, set in __init__ without a
# lookup each (a SpanView is made for every span). The fields are SpanView.__slots__ (a test holds the
# two lists equal); the source stays plain Python.

cdef class SpanView:
    cdef public object agent
    cdef public object agent_is_span_name
    cdef public object cache_read_tokens
    cdef public object cache_write_tokens
    cdef public object cost
    cdef public object cost_source
    cdef public object duration
    cdef public object end_time
    cdef public object enriched
    cdef public object evaluation_target
    cdef public object evaluations
    cdef public object finish_reason
    cdef public object flag
    cdef public object flag_version
    cdef public object input
    cdef public object input_tokens
    cdef public object kind
    cdef public object model
    cdef public object output
    cdef public object output_tokens
    cdef public object parent_span_id
    cdef public object prompt_version
    cdef public object prompt_version_from
    cdef public object provider
    cdef public object reasoning_tokens
    cdef public object reported_cost
    cdef public object response_id
    cdef public object service
    cdef public object skip_call_metrics
    cdef public object span
    cdef public object span_id
    cdef public object status
    cdef public object system_source
    cdef public object targeting_key
    cdef public object tool
    cdef public object trace_id
    cdef public object version_attribute
