"""ASA: Activation Steering Adapter for tool calling."""

__version__ = "0.1.0"
