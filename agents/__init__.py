"""Faust agents: thin shells that read a topic, call a pure function, and write the result."""
