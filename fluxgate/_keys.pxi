# Included into _core.pyx: API keys and quota counters (issue: API keys).
