"""Who may call: the EHR's JWT (``auth``), the trusted clients and their key sets (``jwks``)."""
