"""The GenAI semantic conventions and their dialects, as data and pure functions over OTLP messages.

`dialects`: which attribute carries which canonical field; `values`: reading an attribute value;
`providers`: provider names; `failures`: why a call failed; `events`: content, flag and evaluation
events. The normalize processor applies them; the other processors read events through them. This
package imports only the ground floor, never a component.
"""
