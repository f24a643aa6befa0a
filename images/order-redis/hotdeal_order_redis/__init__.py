"""The Redis order service: stock in Redis, taken in one atomic server-side step."""
