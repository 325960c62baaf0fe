"""`tierkv route`: a cache-aware OpenAI pass-through in front of tierkv replicas."""
