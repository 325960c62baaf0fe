"""tierkv-load: benchmark client for OpenAI-compatible LLM servers.

It only speaks HTTP to the server under test (the offline ``policy`` simulator is the
one exception: it imports ``cache.eviction`` to replay a trace through the cache's own
eviction policies).
"""
