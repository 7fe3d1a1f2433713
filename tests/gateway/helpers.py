"""Values the gateway tests and their fixtures share."""

API_KEY = "test-key-1"
TOKENS = 40  # default speech ids per request on the test gateway (the tiny LLM rarely samples the stop id)
