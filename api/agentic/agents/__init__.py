"""The agent itself (pydantic-ai): the only package of the agentic domain that imports it."""
