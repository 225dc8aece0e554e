"""Identity: principals, key store, shared tables, token verification helpers."""
