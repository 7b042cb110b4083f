"""HTTP, and only here: one blueprint per family of routes (this service's `/predict`, TF
Serving's REST v1, the Open Inference Protocol v2, health and status), the error shapes, the
request hooks and the OpenAPI document. Views parse, call `service.pipeline`, and render."""
