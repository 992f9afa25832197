"""optbench: a terminal workbench for making Transformer models faster and smaller."""

__version__ = "0.1.0"
