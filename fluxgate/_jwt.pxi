# Included into _core.pyx: JWT verification (issue: JWT authentication).
