"""The CDS Hooks HTTP surface: discovery, service calls and feedback (``views``), the body limit,
the security headers every response carries, and the metrics endpoint."""
